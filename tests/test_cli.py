"""Command-line parsing and config merging (no training)."""

from __future__ import annotations

import argparse

import pytest

from visattn.cli.train import add_train_arguments, config_from_args
from visattn.config import ConfigError, attn_label


def parse(argv: list[str]):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def test_defaults_and_task_defaults():
    config = parse([])
    assert (config.backbone, config.data, config.img_size, config.epochs) == ("resnet18", "digits", 32, 15)
    detect = parse(["--task", "detect"])
    assert detect.data == "shapes" and detect.img_size == 160 and detect.batch_size == 16
    assert config.batch_size == 64 and parse(["--task", "detect", "--batch-size", "8"]).batch_size == 8


def test_flags_override_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("backbone: resnet50\nepochs: 7\nlr: 0.01\ntrainer: {gradient_clip_val: 2.0}\n")
    config = parse(["--config", str(path), "--epochs", "3", "--trainer", "accumulate_grad_batches=2"])
    assert config.backbone == "resnet50" and config.epochs == 3 and config.lr == 0.01
    assert config.trainer == {"gradient_clip_val": 2.0, "accumulate_grad_batches": 2}


def test_attn_at_and_set():
    config = parse(["--attn", "stn", "--attn-at", "input"])
    assert config.attn == {"block": "stn", "at": ["input"]}
    assert attn_label(config.attn) == "stn@input"
    config = parse(["--set", "attn=[{block: se, at: 'layer4.*'}, {block: stn, at: input}]", "--devices", "2"])
    assert config.attn[1] == {"block": "stn", "at": "input"} and config.devices == 2
    assert attn_label(config.attn) == "se@layer4.x+stn@input"


def test_set_dotted_keys_merge_into_mappings(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("task: detect\ndata_args: {num_train: 100, num_val: 20}\n")
    config = parse(["--config", str(config_file), "--set", "data_args.num_train=64", "--set", "augment.hflip=0"])
    assert config.data_args == {"num_train": 64, "num_val": 20} and config.augment == {"hflip": 0}


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--set", "epoch=3"], "Did you mean 'epochs'"),
        (["--set", "data_arg.num_train=3"], "Did you mean 'data_args'"),
        (["--set", "lr.value=3"], "'lr' (is not a mapping|must be a number)"),  # lr defaults to None
        (["--epochs", "0"], "epochs must be a positive integer"),
        (["--attn", "se,eca"], "one block per run"),
        (["--set", "lr"], "KEY=VALUE"),
        (["--precision", "8"], "precision"),
        (["--config", "/nonexistent.yaml"], "not found"),
    ],
)
def test_bad_config_values(argv, match):
    with pytest.raises(ConfigError, match=match):
        parse(argv)


def test_unknown_trainer_argument(tmp_path):
    from visattn.training import build_trainer

    config = parse(["--trainer", "max_epoch=3"])
    with pytest.raises(TypeError, match="max_epoch"):
        build_trainer(config, tmp_path, resuming=False)


HELP_PROBE = """
import sys
from visattn.cli.main import COMMANDS, main
for argv in (["--help"], ["--version"], *[[name, "--help"] for name in COMMANDS]):
    try:
        main(argv)
    except SystemExit:
        pass
    heavy = sorted(m for m in ("torch", "lightning", "numpy", "timm") if m in sys.modules)
    if heavy:
        sys.exit(f"visattn {' '.join(argv)} imported {', '.join(heavy)}")
"""


def test_help_imports_no_torch():
    """``visattn --help``, ``--version`` and every ``visattn <command> --help`` parse flags only: no torch (issue 20:
    they took 12-15 s on a busy 2-core machine, almost all of it ``import torch``)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", HELP_PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage: visattn <command>" in done.stdout and "visattn train" in done.stdout
