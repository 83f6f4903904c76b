"""``visattn train``: flags and a config file -> a ``TrainConfig`` -> one training run (``visattn.training``)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from visattn.attention import list_attention
from visattn.backbones import list_backbones
from visattn.cli.main import add_version
from visattn.config import (
    ATTN_INITS,
    DATA_IMG_SIZE,
    FREEZE_CHOICES,
    LOGGERS,
    OPTIMIZER_DEFAULTS,
    SAFE_ON_RESUME,
    TASK_DEFAULTS,
    TASKS,
    VERBOSE_ENV,
    TrainConfig,
    held_notices,
    key_values,
    make_config,
    nest_dotted,
    packaged_configs,
    parse_value,
    read_yaml,
    resolve_config,
)
from visattn.data import list_datasets
from visattn.data.detect import list_detection_datasets
from visattn.errors import ConfigError
from visattn.registry import BACKBONES
from visattn.rundir import CONFIG_FILE, RunFinished, saved_config


def by_task(key: str) -> str:
    """``64 (classify), 16 (detect)``, or one value when the tasks agree."""
    values = {task: defaults[key] for task, defaults in TASK_DEFAULTS.items()}
    if len(set(values.values())) == 1:
        return str(next(iter(values.values())))
    return ", ".join(f"{value} ({task})" for task, value in values.items())


def optimizer_defaults(key: str) -> str:
    """``adamw 0.002, sgd 0.05 (classify) / 0.01 (detect)``: one value per optimiser when its tasks agree."""
    parts = []
    for optimizer, tasks in OPTIMIZER_DEFAULTS.items():
        values = {task: defaults[key] for task, defaults in tasks.items()}
        if len(set(values.values())) == 1:
            parts.append(f"{optimizer} {next(iter(values.values())):g}")
        else:
            parts.append(f"{optimizer} " + " / ".join(f"{v:g} ({task})" for task, v in values.items()))
    return ", ".join(parts)


def img_size_defaults() -> str:
    """``digits 32, cluttered-digits 64, ...``: data sets sharing a size are grouped."""
    groups: dict[int, list[str]] = {}
    for name, size in DATA_IMG_SIZE.items():
        groups.setdefault(size, []).append(name)
    return ", ".join(f"{'/'.join(names)} {size}" for size, names in groups.items())


def choices_text() -> str:
    """The valid backbones, blocks, data sets and packaged configs, for the end of ``--help`` (their names are
    declared, so listing them imports no torch)."""
    lines = [("backbones", list_backbones() + BACKBONES.families()), ("attention blocks", list_attention()),
             ("data (classify)", list_datasets()), ("data (detect)", list_detection_datasets()),
             ("packaged configs", sorted(k.split("/", 1)[1] for k in packaged_configs()
                                         if not k.startswith("sweeps/")))]
    return "\n".join(textwrap.fill(", ".join(names), width=118, initial_indent=f"  {label + ':':<18}",
                                    subsequent_indent=" " * 20) for label, names in lines)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Every flag of a training run; the help shows each default as it will be applied (None means "not set")."""
    base = TrainConfig()
    add = parser.add_argument
    add("--config", help="YAML file of TrainConfig keys, or a packaged config's name (e.g. digits_resnet18_cbam); "
                         "flags given here override it")
    add("--task", choices=TASKS, help=f"(default: {base.task})")
    add("--backbone", help=f"see the list below (default: {base.backbone})")
    add("--attn", help="an attention block (list below), or 'none' (default: none)")
    add("--attn-at", help="glob(s) over slot names, comma-separated (default: the backbone's default slots)")
    add("--attn-init", choices=ATTN_INITS, help="how inserted blocks start: paper (the published init) or identity "
                                                "(output unchanged at step 0); auto = identity with --pretrained, "
                                                "else paper (default: auto)")
    add("--data", help=f"a data set (list below) (default: {by_task('data')})")
    add("--data-dir", help="folder of an imagefolder / cifar / coco / yolo data set")
    add("--img-size", type=int, help=f"square input side (default by data set: {img_size_defaults()})")
    add("--epochs", type=int, help=f"(default: {by_task('epochs')})")
    add("--batch-size", type=int, help=f"(default: {by_task('batch_size')})")
    add("--lr", type=float, help="peak learning rate, after warm-up; cosine decay (default by optimiser: "
                                 f"{optimizer_defaults('lr')})")
    add("--weight-decay", type=float, help=f"(default by optimiser: {optimizer_defaults('weight_decay')})")
    add("--optimizer", choices=["adamw", "sgd"], help=f"(default: {base.optimizer})")
    add("--label-smoothing", type=float, help=f"classification (default: {base.label_smoothing:g})")
    add("--warmup-epochs", type=float, help=f"linear warm-up (default: {base.warmup_epochs:g})")
    add("--early-stopping", type=int, metavar="PATIENCE", help="stop after PATIENCE epochs without a better "
                                                               "validation metric (default: off)")
    add("--seed", type=int, help=f"(default: {base.seed})")
    add("--pretrained", metavar="PATH", help="local weights file (.pth, .safetensors, .ckpt); nothing is downloaded")
    add("--freeze", choices=FREEZE_CHOICES, help="backbone: train only the attention blocks and the head "
                                                 "(default: none)")
    add("--freeze-bn", action="store_true", default=None,
        help="BatchNorm outside the blocks keeps its loaded running statistics (default: off)")
    add("--attn-lr-scale", type=float, metavar="F", help="factor on the learning rate of the inserted blocks "
                                                          "(default: 1)")
    add("--out", help=f"parent folder of run directories (default: {base.out})")
    add("--name", help="run directory name (default: <data>-<backbone>-<attn>-s<seed>; <data> is e.g. "
                       "imagefolder-<folder name> for a data set of your own)")
    add("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
        help="continue a run from its last.ckpt with its own config.yaml: RUN_DIR, or the run named by --out/--name "
             f"(or the defaults); flags given with it may change only {', '.join(SAFE_ON_RESUME)}")
    add("--overwrite", action="store_true", default=None,
        help="replace an existing run directory (only one that visattn made)")
    add("--limit", type=int, help="use only the first N samples of each split (quick checks)")
    add("--skip-bad-images", action="store_true", default=None,
        help="skip undecodable images and count them, also ones that fail only during training")
    add("--verify-images", choices=["quick", "full"], help="the up-front scan of image files: quick (headers, "
                                                           "checksums, truncation) or full (every pixel decoded) "
                                                           f"(default: {base.verify_images})")
    add("--num-workers", type=int, help="data loader workers (default: one per spare core, at most 2)")
    add("--accelerator", help=f"auto | cpu | gpu | ... (default: {base.accelerator})")
    add("--devices", help=f"auto | N | list, as lightning.Trainer takes (default: {base.devices})")
    add("--strategy", help=f"auto | ddp | ddp_spawn | fsdp | ... (default: {base.strategy})")
    add("--num-nodes", type=int, help=f"(default: {base.num_nodes})")
    add("--precision", help="auto (bf16-mixed where the CPU/GPU has bf16 matmuls, else 32) | 32 | bf16-mixed | "
                            f"16-mixed (default: {base.precision})")
    add("--channels-last", action="store_true", default=None, help="NHWC memory layout (default: off)")
    add("--compile", action="store_true", default=None, help="torch.compile the model (default: off)")
    add("--visualize-every", type=int, metavar="N", help="save attention figures every N epochs (default: never)")
    add("--logger", metavar="NAMES", help=f"where the metrics also go, comma-separated: {', '.join(LOGGERS)}. csv "
                                          "(<run>/logs/metrics.csv) is always on, since results.png and sweep "
                                          "reports read it: 'tensorboard' means csv+tensorboard (<run>/tb); mlflow "
                                          "logs to a local store <run>/mlruns (unless MLFLOW_TRACKING_URI is set), "
                                          "wandb offline into <run>/wandb (unless WANDB_MODE is set); each but csv "
                                          "needs its extra: pip install 'visattn[NAME]' (default: csv)")
    add("--set", action="append", metavar="KEY=VALUE", help="any other config key (repeatable), e.g. "
                                                            "backbone_args.base_width=32")
    add("--trainer", action="append", metavar="KEY=VALUE", help="any other lightning.Trainer argument (repeatable)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    file_values = read_yaml(resolve_config(args.config)) if args.config else {}
    overrides: dict[str, Any] = nest_dotted(key_values(args.set, "--set"), {**TrainConfig().to_dict(), **file_values})
    skip = {"config", "set", "trainer", "attn_at", "print_config", "verbose"}
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
    if overrides.get("resume"):
        return resume_config(file_values, overrides, source=args.config or "config")
    return make_config(file_values, overrides, source=args.config or "config")


def resume_config(file_values: Mapping[str, Any], overrides: Mapping[str, Any], *, source: str) -> TrainConfig:
    """``--resume [RUN_DIR]``: the run's own config.yaml; values given with it (flags, --config) replace what they
    name, and ``visattn.training.prepare`` refuses any change outside the keys a resume may change."""
    overrides = dict(overrides)
    target = overrides.pop("resume")
    given = {**file_values, **overrides}
    if isinstance(target, str):
        run_dir = Path(target)
        if not run_dir.name:  # "runs/x/" or "."
            run_dir = run_dir.resolve()
        if "out" in given or "name" in given:
            named = Path(given.get("out", run_dir.parent)) / str(given.get("name", run_dir.name))
            if named.resolve() != run_dir.resolve():
                raise ConfigError(f"--resume {target} and --out/--name ({named}) name different runs; give one")
    else:
        fresh = make_config(file_values, {**overrides, "resume": True}, source=source)
        run_dir = Path(fresh.out) / fresh.run_name()
    location = {"out": str(run_dir.parent), "name": run_dir.name, "resume": True}
    if not (run_dir / CONFIG_FILE).is_file():  # prepare() says why there is nothing to resume
        return make_config(file_values, {**overrides, **location}, source=source)
    values = {k: v for k, v in saved_config(run_dir).to_dict().items() if k not in ("overwrite",)}
    return make_config({}, {**values, **given, **location}, source=source)


def chance_warning(metrics: Mapping[str, Any], *, lr: float) -> str:
    """A warning line when the test metric is at chance (accuracy) or near 0 (mAP), as the sweep flags collapsed
    runs (``visattn.sweep.stats.near_chance``); "" otherwise."""
    from visattn.sweep.stats import near_chance

    leaf = "acc" if metrics.get("task") == "classify" else "map"
    value = (metrics.get("test") or {}).get(leaf)
    if value is None or not math.isfinite(value):
        return ""
    reason = near_chance(leaf, value, metrics.get("num_classes"))
    if not reason:
        return ""
    return (f"visattn: warning: test {leaf} {reason}: the model learned (next to) nothing. Train longer (--epochs, "
            f"it was {metrics.get('epochs')}), change the learning rate (--lr, it was {lr:g}), or check the data and "
            "its labels")


TRAIN_EXAMPLES = """\
examples:
  {prog} --backbone resnet18 --attn cbam                                     # digits, 32 px, 15 epochs
  {prog} --config digits_resnet18_cbam --epochs 5                             # a packaged config, one key changed
  {prog} --backbone resnet50 --attn se --data imagefolder --data-dir ~/pets   # 224 px
  {prog} --task detect --backbone csp_n --attn eca                            # built-in shapes, 160 px
  {prog} --config shapes_csp_n_eca --print-config                             # the resolved config, no training
  {prog} --backbone resnet18 --attn se --logger tensorboard                   # + TensorBoard in <run>/tb

Precedence: flags, then the --config file, then the defaults shown above. The run directory
<out>/<name>/ gets config.yaml (resolved), checkpoints/, logs/ and metrics.json.
"""


def train_parser(prog: str = "visattn train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Train a backbone with attention blocks (classification or detection).",
        epilog=TRAIN_EXAMPLES.format(prog=prog) + "\nvalid choices:\n" + choices_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,  # --epoch is not --epochs
    )
    add_train_arguments(parser)
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--verbose", action="store_true", help="also show Lightning's own banners and notes")
    add_version(parser)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "visattn train") -> int:
    args = train_parser(prog).parse_args(argv)
    with held_notices() as notices:  # shown once the run is set up: a failed command prints only its error
        config = config_from_args(args)
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"  # DDP children and DataLoader workers see it too
    from visattn.training import fit, prepare  # after the flags: --help and --print-config import no torch

    try:
        prepared = prepare(config)
    except RunFinished as done:
        print(f"visattn: {done}")
        test = ", ".join(f"{k}={v:.4f}" for k, v in (done.metrics.get("test") or {}).items()
                         if isinstance(v, (int, float)))
        print(f"run: {done.run_dir}\ntest: {test}")
        return 0
    for line in notices:
        print(line, file=sys.stderr)
    metrics = fit(prepared)
    if prepared.trainer.is_global_zero:
        from visattn.results import format_test_metrics

        for line in getattr(prepared.results, "lines", []):
            print(line)
        test = format_test_metrics(metrics["test"])  # map_small/medium/large only where the split has such objects
        print(f"run: {prepared.run_dir}\ntest: {test}\ntrain time: {metrics['train_time_s']:.1f}s, "
              f"throughput: {metrics['throughput_img_s'] or 0:.0f} img/s, data wait: "
              f"{100 * (metrics['data_wait_frac'] or 0):.1f}% of step time")
        if metrics.get("skipped_images"):
            print(f"skipped {metrics['skipped_images']} undecodable image(s) (--skip-bad-images)")
        warning = chance_warning(metrics, lr=config.lr)
        if warning:
            print(warning, file=sys.stderr)
        diverged = [k for k, v in metrics["test"].items() if v is None or not math.isfinite(v)]
        if diverged:  # the training loss stayed finite, but the weights no longer give numbers
            print(f"visattn: error: non-finite test metric(s) {', '.join(diverged)} (null in metrics.json): the model "
                  f"diverged; lower --lr (it was {config.lr:g}) or add warm-up", file=sys.stderr)
            return 1
    return 0
