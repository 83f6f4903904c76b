"""Export a trained run: ``python tools/export.py --run runs/<dir>`` (an alias of ``visattn export``; see --help)."""

from visattn.cli import run_cli
from visattn.commands import export_main

if __name__ == "__main__":
    run_cli(export_main)
