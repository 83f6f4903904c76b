"""Every registered attention block, its parameters and output shape (an alias of ``visattn blocks``)."""

from visattn.cli import run_cli
from visattn.commands import blocks_main

if __name__ == "__main__":
    run_cli(blocks_main)
