"""Evaluate a run: ``python tools/evaluate.py --run runs/<dir>`` (an alias of ``visattn evaluate``; see --help)."""

from visattn.cli.evaluate import main
from visattn.cli.main import run_cli

if __name__ == "__main__":
    run_cli(main)
