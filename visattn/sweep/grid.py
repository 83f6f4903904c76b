"""A sweep spec (backbones x attention x places x hyperparameters x seeds) and its expansion into runs."""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L

from visattn.config import FIELDS, ConfigError, TrainConfig, attn_label, check_name, held_notices, make_config, notice
from visattn.errors import UnknownNameError
from visattn.models.build import list_slots, normalise_specs
from visattn.models.spec import ModelSpec
from visattn.registry import ATTENTION, check_kwargs, did_you_mean
from visattn.rundir import read_file, write_atomic
from visattn.tasks.factory import TASKS, build_datamodule

SPEC_KEYS = ("name", "backbone", "attn", "at", "seeds", "metric", "reference", "train", "grid")
# TrainConfig keys the sweep itself sets for every run; they cannot be shared values or grid axes.
CONTROLLED = ("backbone", "attn", "seed", "out", "name", "resume", "overwrite")
REFERENCE_KEYS = ("backbone", "backbone_args", "label")
FORMAT = 1
# YAML 1.1 reads ``1e-3`` as a string; these TrainConfig keys take numbers.
FLOAT_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.type in ("float", float, "float | None"))


@dataclass
class SweepSpec:
    """What to compare. ``attn`` entries: a block name, ``none``, a fill_slots spec (mapping or list), or
    ``{"label": ..., "attn": spec}``; plain block names are crossed with ``at`` (None: the backbone's default slots).
    ``reference``: backbones (or ``{"backbone", "backbone_args", "label"}``) trained without attention, same seeds."""

    backbone: list[str]
    attn: list[Any]
    seeds: list[int]
    at: list[Any] = field(default_factory=lambda: [None])
    train: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    reference: list[Any] = field(default_factory=list)
    metric: str | None = None
    name: str | None = None

    @property
    def task(self) -> str:
        return str(self.train.get("task", "classify"))

    @property
    def metric_name(self) -> str:
        return self.metric or (TASKS[self.task].metric if self.task in TASKS else TASKS["classify"].metric)

    def default_name(self) -> str:
        return self.name or f"{self.train.get('data') or 'data'}-{'+'.join(self.backbone)}"


@dataclass(frozen=True)
class RunPlan:
    """One grid point: a training run in ``<sweep dir>/runs/<run_id>``."""

    run_id: str
    config: str  # label of the configuration: the same for every seed
    kind: str  # "grid" or "reference"
    backbone: str
    attn: str
    hparams: dict[str, Any]
    seed: int
    values: dict[str, Any]  # TrainConfig values, without out/name/resume/overwrite
    baseline: str | None  # configuration label of the `none` run to compare with

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Sequence):
        return list(value)
    raise ConfigError(f"{what} must be a list or a comma-separated string, got {value!r}")


def _number(key: str, value: Any) -> Any:
    if key in FLOAT_KEYS and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_seeds(value: Any) -> list[int]:
    """``3`` -> [0, 1, 2]; ``"0,5,7"`` or ``[0, 5, 7]`` -> those seeds."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ConfigError(f"seeds: a count must be >= 1, got {value}")
        return list(range(value))
    if isinstance(value, str) and value.strip().isdigit() and "," not in value:
        return parse_seeds(int(value))
    seeds = _as_list(value, "seeds")
    try:
        out = [int(s) for s in seeds]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"seeds must be a count or a list of integers, got {value!r}") from err
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"seeds must be a non-empty list without repeats, got {value!r}")
    return out


def make_spec(file_values: Mapping[str, Any], overrides: Mapping[str, Any], *,
              source: str = "sweep config") -> SweepSpec:
    """Merge a sweep file's values and overrides (overrides win; ``train`` mappings merge) and validate them."""
    for values, where in ((file_values, source), (overrides, "command-line overrides")):
        for key in values:
            if key not in SPEC_KEYS:
                raise ConfigError(f"unknown sweep key {key!r} in {where}.{did_you_mean(str(key), list(SPEC_KEYS))} "
                                  f"Valid keys: {', '.join(SPEC_KEYS)} (TrainConfig keys go under 'train')")
    merged = {**dict(file_values), **{k: v for k, v in overrides.items() if k != "train"}}
    train = {**dict(file_values.get("train") or {}), **dict(overrides.get("train") or {})}
    train = {k: _number(k, v) for k, v in train.items()}
    grid = {k: [_number(k, v) for v in vs] if isinstance(vs, list) else vs
            for k, vs in dict(merged.get("grid") or {}).items()}
    for key in [*train, *grid]:
        if key in CONTROLLED:
            raise ConfigError(f"{key!r} is set by the sweep for every run; use the sweep keys backbone/attn/seeds "
                              f"(and the sweep's --out/--name), not train/grid.{key}")
        if key not in FIELDS:
            raise ConfigError(f"unknown TrainConfig key {key!r} in the sweep's train/grid.{did_you_mean(key, FIELDS)}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key} must be a non-empty list of values, got {values!r}")
    backbones = [str(b) for b in _as_list(merged.get("backbone", "resnet18"), "backbone")]
    attn = _as_list(merged.get("attn", ["none"]), "attn")
    if not backbones or not attn:
        raise ConfigError("a sweep needs at least one backbone and one attn entry")
    at = merged.get("at")
    at_list = [None] if at is None else [None if a in (None, "default") else a for a in (
        at if isinstance(at, list) else [at])]
    spec = SweepSpec(backbone=backbones, attn=attn, seeds=parse_seeds(merged.get("seeds", 1)), at=at_list,
                     train=train, grid=grid, reference=_as_list(merged.get("reference"), "reference"),
                     metric=merged.get("metric"), name=merged.get("name"))
    if spec.name is not None:
        spec.name = check_name(str(spec.name) if isinstance(spec.name, int) else spec.name, what="sweep")
    if not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", spec.metric_name):
        raise ConfigError(f"metric {spec.metric_name!r} must be a dotted key of metrics.json, e.g. test.acc, test.map")
    return spec


def _attn_entries(spec: SweepSpec) -> list[tuple[str, Any]]:
    """(label, fill_slots spec) of every attention variant, plain block names crossed with the places."""
    out: list[tuple[str, Any]] = []
    for entry in spec.attn:
        if entry is None or entry == "none":
            out.append(("none", None))
        elif isinstance(entry, str):
            for at in spec.at:
                value = entry if at is None else {"block": entry, "at": at}
                out.append((attn_label(value), value))
        elif isinstance(entry, Mapping) and "attn" in entry:
            unknown = [k for k in entry if k not in ("label", "attn")]
            if unknown:
                raise ConfigError(f"attn entry {dict(entry)!r}: unknown key(s) {unknown}; a labelled entry has "
                                  "only 'label' and 'attn'")
            out.append((str(entry.get("label") or attn_label(entry["attn"])), entry["attn"]))
        else:
            out.append((attn_label(entry), entry))
    labels = [label for label, _ in out]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ConfigError(f"attn entries {repeated} appear more than once (or differ only in args); give them "
                          "distinct labels: {label: NAME, attn: SPEC}")
    return out


def _reference_entries(spec: SweepSpec) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, backbone, backbone_args) of each reference model."""
    out = []
    shared_args = dict(spec.train.get("backbone_args") or {})
    for entry in spec.reference:
        if isinstance(entry, str):
            entry = {"backbone": entry}
        if not isinstance(entry, Mapping) or "backbone" not in entry:
            raise ConfigError(f"reference entries are backbone names or mappings with keys {REFERENCE_KEYS}, "
                              f"got {entry!r}")
        unknown = [k for k in entry if k not in REFERENCE_KEYS]
        if unknown:
            raise ConfigError(f"reference {dict(entry)!r}: unknown key(s) {unknown}; valid: {REFERENCE_KEYS}")
        extra = dict(entry.get("backbone_args") or {})
        args = {**shared_args, **extra}
        default = entry["backbone"] + ("[" + ",".join(f"{k}={v}" for k, v in extra.items()) + "]" if extra else "")
        out.append((f"ref {entry.get('label') or default}", str(entry["backbone"]), args))
    return out


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+@-]+", "_", text).strip("_")


def _hp_label(hparams: Mapping[str, Any]) -> str:
    return ",".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in hparams.items())


def expand(spec: SweepSpec) -> list[RunPlan]:
    """Every run of the sweep, seed by seed (all configurations of seed 0 first, so early results cover the grid)."""
    attn = _attn_entries(spec)
    refs = _reference_entries(spec)
    keys = list(spec.grid)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*spec.grid.values())]
    configs: list[tuple[str, str, str, str, Any, dict[str, Any], dict[str, Any], str | None]] = []
    for hp in combos:
        suffix = f" {_hp_label(hp)}" if hp else ""
        for backbone in spec.backbone:
            has_none = any(value is None for _, value in attn)
            baseline = f"{backbone}/none{suffix}" if has_none else None
            for label, value in attn:
                configs.append((f"{backbone}/{label}{suffix}", "grid", backbone, label, value, hp, {}, baseline))
        first_baseline = f"{spec.backbone[0]}/none{suffix}" if any(v is None for _, v in attn) else None
        for label, backbone, args in refs:
            configs.append((f"{label}{suffix}", "reference", backbone, "none", None, hp,
                            {"backbone_args": args}, first_baseline))
    plans: list[RunPlan] = []
    for seed in spec.seeds:
        for config, kind, backbone, label, value, hp, extra, baseline in configs:
            values = {**spec.train, **hp, **extra, "backbone": backbone, "attn": value, "seed": seed}
            plans.append(RunPlan(run_id=_safe(f"{config.replace('/', '-')}-s{seed}"), config=config, kind=kind,
                                 backbone=backbone, attn=label, hparams=hp, seed=seed, values=values,
                                 baseline=baseline))
    ids = [p.run_id for p in plans]
    clashes = sorted({i for i in ids if ids.count(i) > 1})
    if clashes:
        raise ConfigError(f"two grid points map to the same run directory {clashes}; give the attn entries labels")
    with held_notices() as held:  # types and ranges of every configuration, before anything is trained
        for plan in plans[: len(configs)]:
            make_config({}, {**plan.values, "out": "."}, source=f"sweep run {plan.run_id}")
    for text in dict.fromkeys(held):  # a default shared by every configuration is noted once, not per configuration
        notice(text)
    return plans


def _error_text(err: BaseException) -> str:
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    return " ".join(str(text).split())


def _model_slots(config: TrainConfig) -> tuple[list[str], list[str]]:
    """(all slot names, default slot names) of the run's model with every slot empty."""
    spec = ModelSpec.from_config({**config.to_dict(), "attn": None}, num_classes=2)
    model = spec.build()
    role = getattr(model, "default_slot_role", "block")
    slots = list_slots(model)
    return [s.name for s in slots], [s.name for s in slots if s.role == role]


def _check_attn(config: TrainConfig, slots: list[str], defaults: list[str]) -> None:
    """Block names, their argument names and the slot globs of ``config.attn`` (no block is built)."""
    for spec in normalise_specs(config.attn):
        block = spec["block"]
        if block != "none":
            check_kwargs(f"attention block {block!r}", ATTENTION.get(block), spec["args"])
        if spec["at"] is None and block != "none" and not defaults:
            raise UnknownNameError(f"{config.backbone} has no default slots for {block!r}; give 'at' globs. "
                           f"Its slots: {', '.join(slots)}")
        for pattern in spec["at"] or []:
            if not any(fnmatch.fnmatchcase(slot, str(pattern)) for slot in slots):
                raise UnknownNameError(f"attention spec for {block!r}: 'at' pattern {pattern!r} matches no slot of "
                               f"{config.backbone}.{did_you_mean(str(pattern), slots)} Its slots: {', '.join(slots)}")


def _check_data(config: TrainConfig) -> None:
    """Data set name and option names, as training passes them (nothing is loaded)."""
    build_datamodule(config, stage=None)


def _check_trainer(config: TrainConfig) -> None:
    if config.trainer:
        check_kwargs("trainer", L.Trainer, config.trainer)


def _check_pretrained(config: TrainConfig) -> None:
    if config.pretrained and not Path(config.pretrained).is_file():
        raise FileNotFoundError(f"pretrained weights file {config.pretrained} not found")


def _check_slots(built: tuple[list[str], list[str]] | Exception, config: TrainConfig) -> None:
    if isinstance(built, Exception):  # the backbone itself could not be built
        raise built
    _check_attn(config, *built)


def check_grid(plans: Sequence[RunPlan]) -> None:
    """Check every configuration of the grid before the first run: backbone, blocks and their argument names, slot
    globs (against the slots of the model as built, every slot empty), data set and its options, Lightning trainer
    keys and the pretrained file. All problems are reported together. A value a block rejects only when built
    (e.g. heads that do not divide a slot's channels) is left to its run, recorded as a failed grid point."""
    problems: dict[str, str] = {}  # message -> the first configuration with it
    slots: dict[str, tuple[list[str], list[str]] | Exception] = {}  # one build per backbone variant
    seen: set[str] = set()
    for plan in plans:
        if plan.config in seen:
            continue
        seen.add(plan.config)
        with held_notices():  # its notices (default lr ...) were shown by expand()
            config = make_config({}, {**plan.values, "out": "."}, source=f"sweep run {plan.run_id}")
        key = json.dumps([config.task, config.backbone, config.backbone_args, config.img_size, config.neck,
                          config.scale], sort_keys=True, default=str)
        if key not in slots:
            try:
                slots[key] = _model_slots(config)
            except (KeyError, ValueError, TypeError) as err:
                slots[key] = err
        for check in (_check_data, _check_trainer, _check_pretrained, functools.partial(_check_slots, slots[key])):
            try:
                check(config)
            except (KeyError, ValueError, TypeError, FileNotFoundError) as err:
                problems.setdefault(_error_text(err), plan.config)
    if problems:
        items = [f"({i}) {config}: {message}" for i, (message, config) in enumerate(problems.items(), 1)]
        raise ConfigError(f"the sweep grid has {len(problems)} problem(s), so nothing was run: {' '.join(items)}")


def check_sweep_file(sweep_dir: Path, spec: SweepSpec, plans: list[RunPlan], *, sweep_id: str = "") -> list[str]:
    """Write ``sweep.json`` (with ``sweep_id``, the id of the directory's marker); returns the run ids this grid adds
    to the one already there (more seeds or more configurations, every earlier run unchanged), and refuses a grid
    that drops or changes an earlier run."""
    path = sweep_dir / "sweep.json"
    new = json.loads(json.dumps({p.run_id: p.values for p in plans}))
    added: list[str] = []
    if path.exists():
        old_plans = json.loads(read_file(path)).get("runs", [])
        old = {p["run_id"]: p["values"] for p in old_plans}
        only_old = sorted(set(old) - set(new))
        changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
        if only_old or changed:
            only_new = sorted(set(new) - set(old))
            parts = [f"{what}: {', '.join(ids[:4])}{' ...' if len(ids) > 4 else ''}" for what, ids in
                     (("runs only in the old grid", only_old), ("runs only in the new grid", only_new),
                      ("runs with changed settings", changed)) if ids]
            raise ConfigError(f"{sweep_dir} holds a different sweep ({'; '.join(parts)}). A sweep can only grow "
                              "(more seeds or configurations, every earlier run unchanged). Pass --name to start a "
                              "new sweep directory, or --overwrite to delete this one and start again")
        added = [run_id for run_id in new if run_id not in old]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "metric": spec.metric_name, "spec": asdict(spec), "runs": [p.to_dict() for p in plans]}
    if sweep_id:
        payload["sweep_id"] = sweep_id
    write_atomic(path, json.dumps(payload, indent=2))
    return added


def read_sweep_file(sweep_dir: Path) -> tuple[SweepSpec, list[RunPlan]]:
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep directory (no sweep.json); visattn sweep makes them")
    payload = json.loads(read_file(path))
    return SweepSpec(**payload["spec"]), [RunPlan(**p) for p in payload["runs"]]
