"""Run configuration: one typed dataclass, loaded from YAML and overridden by command-line flags."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visattn.registry import did_you_mean

TASKS = ("classify", "detect")


class ConfigError(ValueError):
    """A configuration file or value that cannot be used."""


@dataclass
class TrainConfig:
    """Everything that defines a training run; written resolved to ``<run dir>/config.yaml``."""

    task: str = "classify"
    backbone: str = "resnet18"
    attn: Any = None  # a block name, or a list of {"block", "at", "args"} mappings (see visattn.fill_slots)
    backbone_args: dict[str, Any] = field(default_factory=dict)
    neck: str = "pan"
    scale: str = "n"
    data: str | None = None  # default: digits (classify) or shapes (detect)
    data_dir: str | None = None
    data_args: dict[str, Any] = field(default_factory=dict)
    img_size: int | None = None  # default: 32 (classify) or 160 (detect)
    augment: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None  # use only the first N samples of each split
    skip_bad_images: bool = False
    epochs: int = 15
    batch_size: int | None = None  # default: 64 (classify) or 16 (detect)
    lr: float = 2e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    momentum: float = 0.9
    label_smoothing: float = 0.0
    warmup_epochs: float = 1.0
    early_stopping: int | None = None  # patience in epochs on the validation metric
    seed: int = 0
    pretrained: str | None = None
    num_workers: int | None = None
    out: str = "runs"
    name: str | None = None  # run directory name; default from data, backbone, attn and seed
    resume: bool = False
    overwrite: bool = False
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32"
    channels_last: bool = False  # NHWC weights/activations; not faster on the CPUs measured (benchmarks/README.md)
    compile: bool = False  # torch.compile the model (nn.Module.compile: state-dict keys unchanged)
    trainer: dict[str, Any] = field(default_factory=dict)  # any further lightning.Trainer arguments
    visualize_every: int | None = None

    def run_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.data}-{self.backbone}-{attn_label(self.attn)}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def attn_label(attn: Any) -> str:
    """A short readable label of an attention spec, for run names and tables."""
    if attn is None:
        return "none"
    if isinstance(attn, str):
        return attn
    if isinstance(attn, Mapping):
        attn = [attn]
    parts = []
    for item in attn:
        if isinstance(item, str):
            parts.append(item)
        else:
            at = item.get("at")
            where = "" if at is None else "@" + (at if isinstance(at, str) else "+".join(at))
            parts.append(f"{item.get('block')}{where}")
    return "+".join(parts).replace("*", "x").replace("/", "_") or "none"


FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def check_keys(values: Mapping[str, Any], source: str) -> None:
    for key in values:
        if key not in FIELDS:
            raise ConfigError(f"unknown config key {key!r} in {source}.{did_you_mean(str(key), FIELDS)} "
                              f"Valid keys: {', '.join(FIELDS)}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, got {type(values).__name__}")
    return values


def make_config(file_values: Mapping[str, Any], overrides: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
    """Merge file values and overrides (overrides win), validate and fill task defaults."""
    check_keys(file_values, source)
    check_keys(overrides, "command-line overrides")
    config = TrainConfig(**{**dict(file_values), **dict(overrides)})
    if config.task not in TASKS:
        raise ConfigError(f"unknown task {config.task!r}; valid tasks: {', '.join(TASKS)}")
    if config.data is None:
        config.data = "digits" if config.task == "classify" else "shapes"
    if config.img_size is None:
        config.img_size = 32 if config.task == "classify" else 160
    if config.batch_size is None:
        config.batch_size = 64 if config.task == "classify" else 16
    for key in ("epochs", "batch_size", "img_size", "num_nodes"):
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if config.lr <= 0:
        raise ConfigError(f"lr must be > 0, got {config.lr!r}")
    if config.optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")
    if config.precision not in ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64"):
        raise ConfigError(f"precision {config.precision!r} not supported; use auto, 32, bf16-mixed or 16-mixed")
    if isinstance(config.attn, str) and "," in config.attn:
        raise ConfigError(f"attn {config.attn!r}: one block per run (use tools/sweep.py to compare several)")
    return config


def save_config(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
