"""Attention figures of a trained run: ``python tools/visualize.py --run runs/<dir>`` (an alias of
``visattn visualize``; see --help)."""

from visattn.cli import run_cli
from visattn.commands import visualize_main

if __name__ == "__main__":
    run_cli(visualize_main)
