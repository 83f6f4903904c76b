"""Ablation sweep: ``python tools/sweep.py --backbone resnet18 --attn none,se,cbam --seeds 3`` (see --help)."""

from visattn.cli import run_cli
from visattn.sweep.cli import sweep_main

if __name__ == "__main__":
    run_cli(sweep_main)
