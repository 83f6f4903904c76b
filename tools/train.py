"""Train a model: ``python tools/train.py --backbone resnet50 --attn cbam`` (see --help)."""

from visattn.cli import run_cli, train_main

if __name__ == "__main__":
    run_cli(train_main)
