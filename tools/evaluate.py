"""Evaluate a run: ``python tools/evaluate.py --run runs/<dir>`` (an alias of ``visattn evaluate``; see --help)."""

from visattn.cli import run_cli
from visattn.commands import evaluate_main

if __name__ == "__main__":
    run_cli(evaluate_main)
