"""Command lines shared by ``tools/``: argument parsing, config-file merge, one-paragraph errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from visattn.config import ConfigError, TrainConfig, make_config, read_yaml

# Errors a user can cause with a flag, a config or a file; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, KeyError, ValueError, TypeError, FileNotFoundError)


def error_text(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split())


def run_cli(main: Callable[[], int | None]) -> None:
    """Run ``main``; a user error prints one paragraph and exits 2 instead of a traceback."""
    try:
        code = main()
    except USER_ERRORS as err:
        print(f"visattn: error: {error_text(err)}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)


def parse_value(text: str) -> Any:
    """A YAML scalar/list/mapping from the command line: ``3``, ``0.1``, ``true``, ``[1, 2]``, ``{a: 1}``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def key_values(items: Sequence[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


def nest_dotted(values: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """``{"data_args.num_train": 64}`` -> ``{"data_args": {**base["data_args"], "num_train": 64}}``."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if "." not in key:
            out[key] = value
            continue
        head, rest = key.split(".", 1)
        current = out.get(head, base.get(head))
        if current is None:
            current = {}
        if not isinstance(current, Mapping):
            raise ConfigError(f"--set {key}=...: {head!r} is not a mapping (it is {current!r}); "
                              f"set it whole with --set {head}=VALUE")
        out[head] = {**current, **nest_dotted({rest: value}, current)}
    return out


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--config", help="YAML file of TrainConfig keys; flags given here override it")
    add("--task", choices=["classify", "detect"])
    add("--backbone", help="a name from visattn.list_backbones()")
    add("--attn", help="an attention block name from visattn.list_attention(), or 'none'")
    add("--attn-at", help="glob(s) over slot names, comma-separated (default: the backbone's default slots)")
    add("--data", help="digits | cluttered-digits | imagefolder | cifar (classify); shapes | coco | yolo (detect)")
    add("--data-dir", help="folder of an imagefolder / cifar / coco / yolo data set")
    add("--img-size", type=int)
    add("--epochs", type=int)
    add("--batch-size", type=int)
    add("--lr", type=float)
    add("--weight-decay", type=float)
    add("--optimizer", choices=["adamw", "sgd"])
    add("--label-smoothing", type=float)
    add("--warmup-epochs", type=float)
    add("--early-stopping", type=int, metavar="PATIENCE")
    add("--seed", type=int)
    add("--pretrained", metavar="PATH", help="local weights file (.pth, .safetensors, .ckpt); nothing is downloaded")
    add("--out", help="parent folder of run directories (default: runs)")
    add("--name", help="run directory name (default: <data>-<backbone>-<attn>-s<seed>)")
    add("--resume", action="store_true", default=None, help="continue the run from its last.ckpt")
    add("--overwrite", action="store_true", default=None, help="replace an existing run directory")
    add("--limit", type=int, help="use only the first N samples of each split (quick checks)")
    add("--skip-bad-images", action="store_true", default=None, help="skip undecodable images and count them")
    add("--num-workers", type=int)
    add("--accelerator", help="auto | cpu | gpu | ...")
    add("--devices", help="auto | N | list, as lightning.Trainer takes")
    add("--strategy", help="auto | ddp | ddp_spawn | fsdp | ...")
    add("--num-nodes", type=int)
    add("--precision", help="auto (bf16-mixed where the CPU/GPU has bf16 matmuls, else 32) | 32 | bf16-mixed | 16-mixed")
    add("--channels-last", action="store_true", default=None, help="NHWC memory layout")
    add("--compile", action="store_true", default=None, help="torch.compile the model")
    add("--visualize-every", type=int, metavar="N", help="save attention figures every N epochs")
    add("--set", action="append", metavar="KEY=VALUE", help="any other config key (repeatable)")
    add("--trainer", action="append", metavar="KEY=VALUE", help="any other lightning.Trainer argument (repeatable)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    file_values = read_yaml(args.config) if args.config else {}
    overrides: dict[str, Any] = nest_dotted(key_values(args.set, "--set"), {**TrainConfig().to_dict(), **file_values})
    skip = {"config", "set", "trainer", "attn_at"}
    for key, value in vars(args).items():
        if key not in skip and value is not None:
            overrides[key] = value
    if args.devices is not None:
        overrides["devices"] = parse_value(args.devices)
    if args.attn_at:
        block = overrides.get("attn", file_values.get("attn"))
        if not isinstance(block, str):
            raise ConfigError("--attn-at needs a single block name in --attn")
        overrides["attn"] = {"block": block, "at": [g.strip() for g in args.attn_at.split(",")]}
    if args.trainer:
        overrides["trainer"] = {**file_values.get("trainer", {}), **key_values(args.trainer, "--trainer")}
    return make_config(file_values, overrides, source=args.config or "config")


def train_main(argv: Sequence[str] | None = None) -> int:
    from visattn.train import fit, prepare

    parser = argparse.ArgumentParser(
        prog="tools/train.py", description="Train a backbone with attention blocks (classification or detection)."
    )
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    config = config_from_args(args)
    prepared = prepare(config)
    metrics = fit(prepared)
    if prepared.trainer.is_global_zero:
        test = ", ".join(f"{k}={v:.4f}" for k, v in metrics["test"].items())
        print(f"run: {prepared.run_dir}\ntest: {test}\ntrain time: {metrics['train_time_s']:.1f}s, "
              f"throughput: {metrics['throughput_img_s'] or 0:.0f} img/s, data wait: "
              f"{100 * (metrics['data_wait_frac'] or 0):.1f}% of step time")
        if metrics.get("skipped_images"):
            print(f"skipped {metrics['skipped_images']} undecodable image(s) (--skip-bad-images)")
    return 0
