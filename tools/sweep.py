"""Ablation sweep: ``python tools/sweep.py --backbone resnet18 --attn none,se,cbam --seeds 3`` (see --help)."""

from visattn.cli.main import run_cli
from visattn.cli.sweep import main

if __name__ == "__main__":
    run_cli(main)
