"""Export a trained run: ``python tools/export.py --run runs/<dir>`` (an alias of ``visattn export``; see --help)."""

from visattn.cli.export import main
from visattn.cli.main import run_cli

if __name__ == "__main__":
    run_cli(main)
