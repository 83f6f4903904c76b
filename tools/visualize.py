"""Attention figures of a trained run: ``python tools/visualize.py --run runs/<dir>`` (an alias of
``visattn visualize``; see --help)."""

from visattn.cli.main import run_cli
from visattn.cli.visualize import main

if __name__ == "__main__":
    run_cli(main)
