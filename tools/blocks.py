"""Every registered attention block, its parameters and output shape (an alias of ``visattn blocks``)."""

from visattn.cli.blocks import main
from visattn.cli.main import run_cli

if __name__ == "__main__":
    run_cli(main)
