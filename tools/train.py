"""Train a model: ``python tools/train.py --backbone resnet50 --attn cbam`` (see --help)."""

from visattn.cli.main import run_cli
from visattn.cli.train import main

if __name__ == "__main__":
    run_cli(main)
