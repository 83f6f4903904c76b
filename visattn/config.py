"""Run configuration: one typed dataclass, loaded from YAML and overridden by command-line flags."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from visattn.errors import ConfigError
from visattn.extras import require
from visattn.registry import did_you_mean
from visattn.safe_yaml import MAX_YAML_BYTES, load_yaml

VERBOSE_ENV = "VISATTN_VERBOSE"  # "1": Lightning's banners and notes are shown (``visattn train --verbose``)

TASKS = ("classify", "detect")
# lr and weight_decay when the config does not set them, by optimiser then task. AdamW: 2e-3 (as ultralytics picks
# for AdamW; a ResNet/ViT on small images) with decoupled decay 0.05 (DeiT, timm). SGD (Nesterov, momentum 0.9):
# 0.05 for classification at batch 64 (the CIFAR ResNet recipe's 0.1 at batch 128, linearly scaled) and
# 0.01 for detection (YOLO's lr0); its weight decay is coupled L2, so 5e-4 (ResNet-CIFAR, YOLO): AdamW's 0.05
# would shrink every weight by lr * 0.05 per step and pin the net near zero.
OPTIMIZER_DEFAULTS: dict[str, dict[str, dict[str, float]]] = {
    "adamw": {"classify": {"lr": 2e-3, "weight_decay": 0.05}, "detect": {"lr": 2e-3, "weight_decay": 0.05}},
    "sgd": {"classify": {"lr": 0.05, "weight_decay": 5e-4}, "detect": {"lr": 0.01, "weight_decay": 5e-4}},
}
# Defaults that depend on the task, then on the data set; --help prints these tables (visattn.cli).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classify": {"data": "digits", "img_size": 32, "batch_size": 64, "epochs": 15},
    "detect": {"data": "shapes", "img_size": 160, "batch_size": 16, "epochs": 15},
}
# Image size by data set: the built-in sets at the size they are drawn at, CIFAR at its native 32, image folders
# at the ImageNet 224 that pretrained weights expect, COCO/YOLO folders at the detector default.
DATA_IMG_SIZE: dict[str, int] = {"digits": 32, "cluttered-digits": 64, "cifar": 32, "imagefolder": 224,
                                 "shapes": 160, "coco": 160, "yolo": 160}
# Data sets of the user's own images: the size chosen is announced, since nothing about the files decides it.
ANNOUNCE_SIZE = ("imagefolder", "coco", "yolo")

# What a resume may change: how and how long it trains, never what it trains. Everything else (architecture, data,
# task, seed, optimiser, precision, trainer arguments) is the run's identity and must match its config.yaml.
SAFE_ON_RESUME = ("epochs", "devices", "accelerator", "strategy", "num_nodes", "num_workers", "early_stopping",
                  "visualize_every", "channels_last", "compile",  # these two: memory layout and compilation only
                  "logger")  # where the metrics are also sent; logs/metrics.csv goes on either way
LOCATION_KEYS = ("out", "name", "resume", "overwrite", "run_id")  # where a run is and how it was reached, not what
# it is
VERIFY_IMAGES = ("quick", "full")  # the up-front scan of image files: headers and checksums, or every pixel decoded
# How inserted blocks start (visattn.layers.gate): "auto" is "identity" with a pretrained file (the network's output
# is unchanged at step 0), else "paper" (the published block).
ATTN_INITS = ("auto", "paper", "identity")
FREEZE_CHOICES = ("none", "backbone")  # visattn.tasks.finetune
# What ``visattn export`` makes (visattn.export); here so that its --help imports no torch.
EXPORT_FORMATS = ("onnx", "torchscript", "safetensors")
# Lightning's loggers a run can write to (visattn.training.make_loggers). "csv" is always on: results.png and the
# sweep's reports read <run>/logs/metrics.csv. The others need their extra (pip install 'visattn[<name>]').
LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")
DEFAULT_OPSET = 18


@dataclass
class TrainConfig:
    """Everything that defines a training run; written resolved to ``<run dir>/config.yaml``."""

    task: str = "classify"
    backbone: str = "resnet18"
    attn: Any = None  # a block name, or a list of {"block", "at", "args"} mappings (see visattn.fill_slots)
    attn_init: str = "auto"  # paper | identity | auto (identity with `pretrained`); a block's args.init wins
    backbone_args: dict[str, Any] = field(default_factory=dict)
    neck: str = "pan"
    scale: str = "n"
    data: str | None = None  # default: digits (classify) or shapes (detect)
    data_dir: str | None = None
    data_args: dict[str, Any] = field(default_factory=dict)
    img_size: int | None = None  # default: by data set (DATA_IMG_SIZE), else by task
    augment: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None  # use only the first N samples of each split
    skip_bad_images: bool = False
    verify_images: str = "quick"  # "full": decode every pixel of every image up front (VERIFY_IMAGES)
    epochs: int | None = None  # default: by task (TASK_DEFAULTS)
    batch_size: int | None = None  # default: 64 (classify) or 16 (detect)
    lr: float | None = None  # default: by optimiser and task (OPTIMIZER_DEFAULTS)
    weight_decay: float | None = None  # default: by optimiser (OPTIMIZER_DEFAULTS)
    optimizer: str = "adamw"
    momentum: float = 0.9
    label_smoothing: float = 0.1  # measured: benchmarks/recipe_vs_plain_loop.py (benchmarks/README.md)
    warmup_epochs: float = 1.0
    early_stopping: int | None = None  # patience in epochs on the validation metric
    seed: int = 0
    pretrained: str | None = None
    freeze: str = "none"  # none | backbone: train only the attention blocks and the head (visattn.tasks.finetune)
    freeze_bn: bool = False  # BatchNorm outside the blocks keeps its loaded running statistics
    attn_lr_scale: float = 1.0  # factor on the lr of the inserted blocks' parameters
    num_workers: int | None = None
    out: str = "runs"
    name: str | None = None  # run directory name; default from data, backbone, attn and seed
    resume: bool = False
    overwrite: bool = False
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"  # bf16-mixed where the CPU/GPU has bf16 matmuls, else 32 (visattn.perf.resolve_precision)
    channels_last: bool = False  # NHWC weights/activations; not faster on the CPUs measured (benchmarks/README.md)
    compile: bool = False  # torch.compile the model (nn.Module.compile: state-dict keys unchanged)
    trainer: dict[str, Any] = field(default_factory=dict)  # any further lightning.Trainer arguments
    visualize_every: int | None = None
    # csv plus any of LOGGERS; a comma-separated string is accepted and stored as the list
    logger: list[str] | str = field(default_factory=lambda: ["csv"])
    run_id: str | None = None  # written by visattn: the random id of the run directory's .visattn-run marker

    def run_name(self) -> str:
        if self.name:
            return self.name
        # a default name is made a valid folder name (check_name): e.g. an ``at`` glob's brackets;
        # timm:convnext_atto -> timm-convnext_atto
        backbone = self.backbone.replace(":", "-")
        data = self.data
        if data in ANNOUNCE_SIZE and self.data_dir:  # the user's own folder: two data sets must not share a name
            data = f"{data}-{Path(str(self.data_dir)).expanduser().resolve().name or 'root'}"
        return re.sub(r"[^\w.@+=-]", "_", f"{data}-{backbone}-{attn_label(self.attn)}-s{self.seed}")

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


def uses_default_init(attn: Any) -> bool:
    """Whether some block of the attention spec takes ``attn_init`` (no ``init`` of its own in ``args``)."""
    items = [] if attn is None else [attn] if isinstance(attn, (str, Mapping)) else list(attn)
    for item in items:
        if isinstance(item, str) and item != "none":
            return True
        if isinstance(item, Mapping) and item.get("block") != "none" and "init" not in (item.get("args") or {}):
            return True
    return False


def effective_init(attn: Any, attn_init: str) -> str | None:
    """The init the blocks of ``attn`` start with: a block's own ``args.init`` wins over ``attn_init``. ``None``
    without blocks; the inits joined by ``+`` when blocks differ (``"paper+identity"``)."""
    items = [] if attn is None else [attn] if isinstance(attn, (str, Mapping)) else list(attn)
    inits: list[str] = []
    for item in items:
        if isinstance(item, str):
            init = None if item == "none" else attn_init
        else:
            init = None if item.get("block") == "none" else str((item.get("args") or {}).get("init", attn_init))
        if init is not None and init not in inits:
            inits.append(init)
    return "+".join(inits) or None


FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
NAME_SIGNS = "._-@+="  # besides letters and digits, what a run or sweep name may hold



def check_name(name: str, *, what: str = "run") -> str:
    """A run or sweep name is one folder name: letters, digits and ``._-@+=``, not ``.``/``..``, not starting with
    ``~`` or ``-`` (a shell would read it as a home folder or an option); it can never point outside ``--out``."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{what} name must be a non-empty string, got {name!r}")
    bad = sorted({c for c in name if not (c.isalnum() or c in NAME_SIGNS)})
    if name in (".", "..") or bad or name[0] in "~-":
        why = (f"it holds {', '.join(repr(c) for c in bad)}" if bad else
               "it starts with '~' or '-'" if name[0] in "~-" else "it names the folder itself or its parent")
        raise ConfigError(f"{what} name {name!r} must be a single folder name of letters, digits and "
                          f"{' '.join(NAME_SIGNS)}, not starting with '~' or '-' ({why}); use --out to choose the "
                          "parent folder")
    return name


def logger_names(value: Any) -> list[str]:
    """``"tensorboard"``, ``"csv,tensorboard"`` or ``["tensorboard"]`` -> ``["csv", "tensorboard"]``: csv first and
    always (visattn reads logs/metrics.csv), then each other name once, in the order given."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"logger must be a name or a list of names out of {', '.join(LOGGERS)}, got {value!r}")
    names = ["csv"]
    for item in items:
        name = item.strip() if isinstance(item, str) else item
        if name == "":
            continue  # "csv,tensorboard," from a shell loop
        if name not in LOGGERS:
            raise ConfigError(f"unknown logger {name!r}.{did_you_mean(str(name), list(LOGGERS))} Valid loggers: "
                              f"{', '.join(LOGGERS)}, comma-separated (csv is always on: results.png and sweep "
                              "reports read logs/metrics.csv)")
        if name not in names:
            names.append(name)
    return names


# The package each optional logger needs (visattn.extras names the extra that installs it)
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


def require_loggers(logger: Any) -> None:
    """Import the package of every logger ``logger`` names, or stop with :class:`~visattn.extras.MissingExtraError`
    naming its extra; called before a run or sweep directory is claimed, so a missing one changes nothing.
    MLflow (3.2 and later) sends usage telemetry unless told not to: it is told not to, before its first import,
    unless the environment already says otherwise (visattn reaches no network by itself)."""
    for name in logger_names(logger):
        if name in LOGGER_PACKAGES:
            if name == "mlflow":
                os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            require(LOGGER_PACKAGES[name], purpose=f"--logger {name}")


def check_keys(values: Mapping[str, Any], source: str) -> None:
    for key in values:
        if key not in FIELDS:
            raise ConfigError(f"unknown config key {key!r} in {source}.{did_you_mean(str(key), FIELDS)} "
                              f"Valid keys: {', '.join(FIELDS)}")


CONFIG_DIR = Path(__file__).parent / "configs"  # the ready configs, shipped in the package (configs/ in a checkout)


def packaged_configs() -> dict[str, Path]:
    """The ready configs by name, ``classify/digits_resnet18_cbam`` -> its file."""
    if not CONFIG_DIR.is_dir():
        return {}
    return {p.relative_to(CONFIG_DIR).with_suffix("").as_posix(): p for p in sorted(CONFIG_DIR.glob("*/*.yaml"))}


def resolve_config(name: str | Path) -> Path:
    """A config file: ``name`` if that file exists, else a packaged config by name (``digits_resnet18_cbam``,
    with or without ``.yaml`` and its ``classify/``, ``detect/`` or ``sweeps/`` folder)."""
    path = Path(name)
    if path.is_file():
        return path
    configs = packaged_configs()
    key = str(name).removesuffix(".yaml").removesuffix(".yml")
    key = key.removeprefix("configs/")
    if key in configs:
        return configs[key]
    matches = [p for k, p in configs.items() if k.split("/", 1)[1] == key]
    if len(matches) == 1:
        return matches[0]
    short = sorted({k.split("/", 1)[1] for k in configs})
    raise ConfigError(f"config file {str(name)!r} not found, and no packaged config has that name."
                      f"{did_you_mean(key, short)} Packaged configs: "
                      f"{', '.join(short) or 'none (the package has no configs folder)'}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"config file {path} is {size / 1e6:.1f} MB; visattn reads YAML files of at most "
                          f"{MAX_YAML_BYTES / 1e6:.0f} MB")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                          "save it as UTF-8") from err
    values = load_yaml(text, source=str(path)) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, got {type(values).__name__}")
    return values


# ------------------------------------------------------------------------------------------ values from flags
def parse_value(text: str) -> Any:
    """A YAML scalar/list/mapping from the command line: ``3``, ``0.1``, ``true``, ``[1, 2]``, ``{a: 1}``."""
    try:
        return load_yaml(text, source="the command line")
    except ConfigError as err:
        if isinstance(err.__cause__, yaml.YAMLError):
            return text
        raise


def key_values(items: Sequence[str] | None, flag: str, *, parse: Callable[[str], Any] | None = None,
               form: str = "KEY=VALUE") -> dict[str, Any]:
    """Repeated ``KEY=VALUE`` flags -> ``{key: parse(value)}`` (default :func:`parse_value`); dashes in keys become
    underscores. ``form`` names the expected shape in the error."""
    parse = parse or parse_value
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag} expects {form}, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse(value)
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




def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint) or hint
    return {dict: "a mapping", list: "a list", float: "a number", int: "an integer", bool: "true/false",
            str: "a string"}.get(origin, getattr(origin, "__name__", str(origin)))


def _fits(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if typing.get_origin(hint) in (Union, types.UnionType):
        return any(_fits(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint) or hint
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is dict:
        return isinstance(value, Mapping)
    return isinstance(value, origin)


def check_types(config: TrainConfig) -> None:
    """Every value against its dataclass field type, so ``lr: fast`` or ``trainer: 5`` names the key, not a
    TypeError deep inside. YAML reads ``1e-3`` (no dot) as a string: numeric strings are accepted for numbers."""
    hints = typing.get_type_hints(TrainConfig)
    for item in dataclasses.fields(TrainConfig):
        hint, value = hints[item.name], getattr(config, item.name)
        if item.name == "precision" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # YAML ``precision: 32``
            setattr(config, item.name, value)
        if isinstance(value, str) and not _fits(value, hint) and _fits(1.0, hint):
            try:
                value = float(value)
            except ValueError:
                pass
            else:
                setattr(config, item.name, value)
        if not _fits(value, hint):
            raise ConfigError(f"config key {item.name!r} must be {_type_name(hint)}, got {value!r} "
                              f"({type(value).__name__})")


_HELD_NOTICES: list[list[str]] = []


@contextlib.contextmanager
def held_notices() -> Iterator[list[str]]:
    """Collect the notices of the defaults ``make_config`` chose instead of printing them, so a command can show
    them once the run is set up (an error then stays the only thing a failed command prints)."""
    held: list[str] = []
    _HELD_NOTICES.append(held)
    try:
        yield held
    finally:
        _HELD_NOTICES.pop()


# Where launchers put a process's global rank: torchrun and Lightning's own launcher, SLURM's srun, MPI (MPICH, Intel
# MPI, Open MPI), LSF's jsrun. RANK wins: under `srun torchrun ...` SLURM_PROCID numbers the nodes, not the processes.
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "JSM_NAMESPACE_RANK")


def global_rank() -> int:
    """This process's rank over every node, from the launcher's environment; 0 when nothing launched it.

    Without any of ``RANK_VARIABLES`` (Lightning's launcher before it starts the other processes of a node)
    the rank is 0 only on node 0 (``NODE_RANK``) in its first process (``LOCAL_RANK``).
    """
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"environment variable {name}={value!r} is not a process rank (an integer)") from None
    local, node = os.environ.get("LOCAL_RANK", "0").strip() or "0", os.environ.get("NODE_RANK", "0").strip() or "0"
    return 0 if (local, node) == ("0", "0") else 1


def notice(text: str) -> None:
    """A one-line note on stderr (global rank 0 only), or into the innermost ``held_notices()``."""
    if global_rank() != 0:
        return
    if _HELD_NOTICES:
        _HELD_NOTICES[-1].append(text)
    else:
        print(text, file=sys.stderr)


def make_config(file_values: Mapping[str, Any], overrides: Mapping[str, Any], *, source: str = "config") -> TrainConfig:
    """Merge file values and overrides (overrides win), validate and fill task defaults."""
    check_keys(file_values, source)
    check_keys(overrides, "command-line overrides")
    config = TrainConfig(**{**dict(file_values), **dict(overrides)})
    check_types(config)
    if config.name is not None:
        check_name(config.name)
    config.logger = logger_names(config.logger)
    if config.task not in TASKS:
        raise ConfigError(f"unknown task {config.task!r}; valid tasks: {', '.join(TASKS)}")
    defaults = TASK_DEFAULTS[config.task]
    if config.data is None:
        config.data = defaults["data"]
    if config.img_size is None:
        config.img_size = DATA_IMG_SIZE.get(config.data, defaults["img_size"])
        if config.data in ANNOUNCE_SIZE:
            notice(f"visattn: {config.data}: img_size {config.img_size} (this data set's default; "
                   "--img-size to change)")
    if config.batch_size is None:
        config.batch_size = defaults["batch_size"]
    if config.epochs is None:
        config.epochs = defaults["epochs"]
    for key in ("epochs", "batch_size", "img_size", "num_nodes"):
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if config.optimizer not in OPTIMIZER_DEFAULTS:
        raise ConfigError(f"optimizer must be 'adamw' or 'sgd', got {config.optimizer!r}")
    chosen = {key: value for key, value in OPTIMIZER_DEFAULTS[config.optimizer][config.task].items()
              if getattr(config, key) is None}
    for key, value in chosen.items():
        setattr(config, key, value)  # saved with the run's resolved config.yaml
    if chosen:
        shown = ", ".join(f"{key} {value:g}" for key, value in chosen.items())
        notice(f"visattn: {config.optimizer} ({config.task}) default {shown} (--lr / --weight-decay to change)")
    for key in chosen.keys() ^ {"lr", "weight_decay"}:  # given ones: YAML could have made them anything
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key!r} must be a number, got {value!r}")
    check_ranges(config)
    if config.precision not in ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "64"):
        raise ConfigError(f"precision {config.precision!r} not supported; use auto, 32, bf16-mixed or 16-mixed")
    if isinstance(config.attn, str) and "," in config.attn:
        raise ConfigError(f"attn {config.attn!r}: one block per run (use visattn sweep to compare several)")
    if config.freeze not in FREEZE_CHOICES:
        raise ConfigError(f"freeze must be one of {', '.join(FREEZE_CHOICES)}, got {config.freeze!r}")
    scale = config.attn_lr_scale
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ConfigError(f"attn_lr_scale must be a finite number >= 0, got {scale!r}")
    # timm's way to name a weights file: a run loads it as `pretrained` (reported, checked, blocks as the identity)
    overlay = config.backbone_args.get("pretrained_cfg_overlay")
    if overlay is not None:
        if not isinstance(overlay, Mapping) or set(overlay) != {"file"}:
            raise ConfigError(f"backbone_args.pretrained_cfg_overlay must be {{file: PATH}} (a local weights file; "
                              f"nothing is downloaded), got {overlay!r}")
        if config.pretrained and str(config.pretrained) != str(overlay["file"]):
            raise ConfigError(f"weights given twice: pretrained {config.pretrained!r} and "
                              f"backbone_args.pretrained_cfg_overlay {overlay!r}; give one")
        config.pretrained = str(overlay["file"])
        config.backbone_args = {k: v for k, v in config.backbone_args.items() if k != "pretrained_cfg_overlay"}
    if config.attn_init not in ATTN_INITS:
        raise ConfigError(f"attn_init must be one of {', '.join(ATTN_INITS)}, got {config.attn_init!r}")
    if config.attn_init == "auto":
        config.attn_init = "identity" if config.pretrained else "paper"
        if config.pretrained and uses_default_init(config.attn):
            notice("visattn: attention blocks start as the identity (attn_init identity, the default with "
                   "--pretrained: the pretrained network's output is unchanged at step 0; --attn-init paper for "
                   "the published init)")
    return config


# (key, low, low excluded, high (always excluded), the range in words): every float a run takes, finite, in range
RANGES: tuple[tuple[str, float, bool, float, str], ...] = (
    ("lr", 0.0, True, math.inf, "> 0"),
    ("weight_decay", 0.0, False, math.inf, ">= 0"),
    ("momentum", 0.0, False, 1.0, "in [0, 1)"),
    ("label_smoothing", 0.0, False, 1.0, "in [0, 1)"),
    ("warmup_epochs", 0.0, False, math.inf, ">= 0"),
)

OPTIONAL_COUNTS = {"early_stopping": 1, "visualize_every": 1, "limit": 1, "num_workers": 0}  # None, or >= this


def check_ranges(config: TrainConfig) -> None:
    """Every numeric key finite and in its range (NaN fails every comparison, so it is tested first), so that a
    bad value stops the command before a run directory is touched, not at the first training step."""
    for key, low, low_excluded, high, allowed in RANGES:
        value = getattr(config, key)
        ok = math.isfinite(value) and (value > low if low_excluded else value >= low) and value < high
        if not ok:
            raise ConfigError(f"{key} must be a finite number {allowed}, got {value!r}")
    for key, low in OPTIONAL_COUNTS.items():
        value = getattr(config, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ConfigError(f"{key} must be null (off) or an integer >= {low}, got {value!r}")
    if isinstance(config.seed, bool) or config.seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {config.seed!r}")
    if config.verify_images not in VERIFY_IMAGES:
        raise ConfigError(f"verify_images must be one of {', '.join(VERIFY_IMAGES)}, got {config.verify_images!r}")
