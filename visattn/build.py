"""Build a model by name: backbone, attention blocks in named slots, pretrained weights from a local file."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import visattn.attention  # noqa: F401  (registers the blocks)
import visattn.backbones  # noqa: F401  (registers the backbones)
from visattn.attention import build_attention
from visattn.errors import BadArgumentError, BadValueError, UnknownNameError
from visattn.layers import AttentionSlot, empty_slots
from visattn.layers.gate import GATE_INITS
from visattn.registry import ATTENTION, BACKBONES, check_kwargs, did_you_mean, keyword_names

logger = logging.getLogger("visattn")

AttnSpec = str | Mapping[str, Any] | Sequence[str | Mapping[str, Any]] | None
SPEC_KEYS = ("block", "at", "args")


@dataclass(frozen=True)
class SlotInfo:
    """One slot of a model: its name (module path), channel count, role and the block in it (or None)."""

    name: str
    channels: int
    role: str
    block: str | None


def list_slots(model: nn.Module) -> list[SlotInfo]:
    """Every attention slot in ``model``, filled or empty, in module order."""
    return [
        SlotInfo(name, module.channels, module.role, module.block_name)
        for name, module in model.named_modules()
        if isinstance(module, AttentionSlot)
    ]


def _slot_modules(model: nn.Module) -> dict[str, AttentionSlot]:
    return {name: m for name, m in model.named_modules() if isinstance(m, AttentionSlot)}


def _normalise_specs(attn: AttnSpec) -> list[dict[str, Any]]:
    if attn is None:
        return []
    if isinstance(attn, (str, Mapping)):
        attn = [attn]
    specs = []
    for item in attn:
        if isinstance(item, str):
            item = {"block": item}
        if not isinstance(item, Mapping):
            raise BadArgumentError(f"attention spec must be a block name or a mapping with keys {SPEC_KEYS}, "
                                   f"got {item!r}")
        unknown = [k for k in item if k not in SPEC_KEYS]
        if unknown:
            hint = "".join(did_you_mean(k, list(SPEC_KEYS)) for k in unknown)
            raise UnknownNameError(f"unknown key(s) {unknown} in attention spec {dict(item)!r}.{hint} "
                                   f"Valid keys: {SPEC_KEYS}")
        if "block" not in item:
            raise UnknownNameError(f"attention spec {dict(item)!r} has no 'block' (a name from "
                                   "visattn.list_attention())")
        at = item.get("at")
        specs.append({
            "block": item["block"],
            "at": [at] if isinstance(at, str) else (list(at) if at is not None else None),
            "args": dict(item.get("args") or {}),
        })
    return specs


def fill_slots(model: nn.Module, attn: AttnSpec, *, default_role: str = "block", init: str | None = None) -> nn.Module:
    """Put attention blocks into ``model``'s slots.

    ``attn`` is a block name (default slots: those whose role is ``default_role``), a mapping
    ``{"block": name, "at": glob or list of globs over slot names, "args": {...}}``, or a list of
    those. The block name "none" leaves the slots empty (the baseline costs exactly nothing).
    A glob that matches no slot, a slot filled twice, or a block that cannot be built for a slot's
    channel count raises with the slot names that exist.
    ``init`` ("paper" or "identity"): the ``init`` of every block whose spec does not set one in its ``args``.
    """
    if init is not None and init not in GATE_INITS:
        raise BadValueError(f"attention init must be one of {list(GATE_INITS)}, got {init!r}")
    slots = _slot_modules(model)
    names = list(slots)
    plan: dict[str, tuple[str, dict[str, Any]]] = {}
    for spec in _normalise_specs(attn):
        block, args = spec["block"], spec["args"]
        if spec["at"] is None:
            targets = [n for n, s in slots.items() if s.role == default_role]
            if not targets:
                raise UnknownNameError(f"model has no slots with role {default_role!r}; its slots: {', '.join(names)}")
        else:
            targets = []
            for pattern in spec["at"]:
                matched = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
                if not matched:
                    raise UnknownNameError(
                        f"attention spec for {block!r}: 'at' pattern {pattern!r} matches no slot."
                        f"{did_you_mean(pattern, names)} Slots of this model: {', '.join(names)}"
                    )
                targets.extend(m for m in matched if m not in targets)
        for target in targets:
            if target in plan:
                raise BadValueError(
                    f"slot {target!r} would be filled twice ({plan[target][0]!r} and {block!r}); "
                    "give each slot one block (narrow the 'at' globs)"
                )
            plan[target] = (block, args)
    for target, (block, args) in plan.items():
        if block == "none":
            continue
        if init is not None and "init" not in args:
            if "init" not in keyword_names(ATTENTION.get(block)):
                raise BadValueError(f"attention block {block!r} takes no 'init' argument, so it cannot be started "
                                 f"{init!r}; every registered block should take init='paper' | 'identity'")
            args = {**args, "init": init}
        slot = slots[target]
        try:
            module = build_attention(block, slot.channels, **args)
        except (ValueError, TypeError) as err:
            raise BadValueError(f"cannot put {block!r} in slot {target!r} ({slot.channels} channels): {err}") from err
        slot.fill(module, block)
    return model


@dataclass
class LoadReport:
    """What loading a pretrained file did."""

    path: str
    loaded: int = 0
    output_change: float | None = None  # set by measure_output_change: what the inserted blocks do to the output
    attention_initialised: list[str] = field(default_factory=list)
    classifier_reinitialised: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # re-initialised key -> why (shape mismatch, not in file)

    def summary(self) -> str:
        """One line for the command line: a re-initialised classifier must not go unnoticed."""
        parts = [f"loaded {self.loaded} tensors from {self.path}"]
        if self.classifier_reinitialised:
            why: dict[str, list[str]] = {}  # reason -> keys, in order
            for key in self.classifier_reinitialised:
                why.setdefault(self.reasons.get(key, ""), []).append(key)
            parts.append("re-initialised: " + "; ".join(
                ", ".join(keys) + (f" ({reason})" if reason else "") for reason, keys in why.items()))
        if self.attention_initialised:
            parts.append(f"{len(self.attention_initialised)} attention tensors left at init")
        if self.output_change is not None:
            parts.append(f"the inserted blocks change the output by {self.output_change:.3g} (relative L2"
                         f"{', the identity' if self.output_change == 0 else ''})")
        return "; ".join(parts)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors``, ``.pth``/``.pt`` or Lightning ``.ckpt`` file into a flat state dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path} (expected a .pth, .pt, .ckpt or "
                                ".safetensors file on this machine; nothing is downloaded)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt or foreign file: say which file and why
        raise BadValueError(f"cannot read weights from {path}: {type(err).__name__}: {err}") from err
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    elif isinstance(state, Mapping) and "model" in state and isinstance(state["model"], Mapping):
        state = state["model"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    keys = list(state)
    if keys and all(k.startswith("model.") for k in keys):  # a LightningModule that holds the model as .model
        state = {k[len("model."):]: v for k, v in state.items()}
    return dict(state)


def load_pretrained(model: nn.Module, path: str | Path) -> LoadReport:
    """Load backbone weights strictly; attention parameters and a mismatched classifier keep their init."""
    state = read_state_dict(path)
    convert = getattr(model, "convert_state_dict", None)
    if convert is not None:
        state = convert(state)
    adapt = getattr(model, "adapt_pretrained", None)
    if adapt is not None:
        state = adapt(state)
    own = model.state_dict()
    slot_prefixes = tuple(f"{n}.block." for n, s in _slot_modules(model).items() if s.filled)
    classifier = getattr(model, "classifier_name", None)
    report = LoadReport(str(path))
    to_load: dict[str, torch.Tensor] = {}
    missing = []
    for key, tensor in own.items():
        if key in state and state[key].shape == tensor.shape:
            to_load[key] = state[key]
        elif key.startswith(slot_prefixes):
            report.attention_initialised.append(key)
        elif classifier and key.startswith(f"{classifier}."):  # another class count, or a headless file
            report.classifier_reinitialised.append(key)
            report.reasons[key] = (f"shape mismatch: {tuple(state[key].shape)} in file, {tuple(tensor.shape)} in model"
                                   if key in state else "not in file")
        elif key in state:
            missing.append(f"{key} (shape {tuple(state[key].shape)} in file, {tuple(tensor.shape)} in model)")
        else:
            missing.append(key)
    unexpected = [k for k in state if k not in own and not (classifier and k.startswith(f"{classifier}."))]
    if missing or unexpected:
        raise UnknownNameError(
            f"{path} does not fit this model. Missing or mismatched backbone keys ({len(missing)}): "
            f"{', '.join(missing[:20])}{' ...' if len(missing) > 20 else ''}. Unexpected keys ({len(unexpected)}): "
            f"{', '.join(unexpected[:20])}{' ...' if len(unexpected) > 20 else ''}"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = len(to_load)
    logger.info("pretrained: %s", report.summary())
    return report


def build_model(
    backbone: str,
    *,
    attn: AttnSpec = None,
    num_classes: int = 1000,
    in_chans: int = 3,
    img_size: int | None = None,
    pretrained: str | Path | None = None,
    backbone_args: Mapping[str, Any] | None = None,
    attn_init: str | None = None,
) -> nn.Module:
    """Build ``backbone`` with attention blocks in its slots.

    ``attn``, ``attn_init``: see :func:`fill_slots` (its ``attn`` and ``init``). ``img_size`` is passed to
    backbones that take it (ViT, Swin).
    ``backbone_args``: further keyword arguments of the backbone's builder (e.g. ``depth``), checked
    against its signature. ``pretrained``: a local weights file, loaded after the slots are filled.
    """
    ctor = BACKBONES.get(backbone)
    kwargs: dict[str, Any] = dict(backbone_args or {})
    check_kwargs(f"backbone {backbone!r}", ctor, kwargs)
    kwargs.setdefault("num_classes", num_classes)
    kwargs.setdefault("in_chans", in_chans)
    if img_size is not None and "img_size" in keyword_names(ctor):
        kwargs.setdefault("img_size", img_size)
    model = ctor(**kwargs)
    if img_size is not None:
        model.check_input_size(img_size, img_size)
    fill_slots(model, attn, default_role=getattr(model, "default_slot_role", "block"), init=attn_init)
    if pretrained is not None:
        model.pretrained_report = load_pretrained(model, pretrained)
    return model



def _flat_outputs(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output.detach().float().flatten()
    if isinstance(output, Mapping):
        output = list(output.values())
    return torch.cat([_flat_outputs(item) for item in output])


@torch.no_grad()
def measure_output_change(model: nn.Module, images: torch.Tensor) -> float:
    """Relative L2 change ``|f(x) - f0(x)| / |f0(x)|`` of eval-mode outputs, ``f0`` being ``model`` with every slot
    empty: 0 when the inserted blocks leave a (pretrained) network as it was, about 0.5 for gates halving it."""
    was_training = model.training
    model.eval()
    try:
        with_blocks = _flat_outputs(model(images))
        with empty_slots(model):
            without = _flat_outputs(model(images))
    finally:
        model.train(was_training)
    return float((with_blocks - without).norm() / without.norm().clamp_min(1e-12))
