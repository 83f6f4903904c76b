"""Build a model by name: a registered backbone with attention blocks in its named slots."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

import visattn.backbones  # noqa: F401  (declares the backbones)
from visattn.attention import build_attention
from visattn.errors import BadArgumentError, BadValueError, UnknownNameError
from visattn.layers import slot_modules
from visattn.layers.gate import GATE_INITS
from visattn.models.weights import load_pretrained
from visattn.registry import ATTENTION, BACKBONES, check_kwargs, did_you_mean, keyword_names

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
    return [SlotInfo(name, slot.channels, slot.role, slot.block_name) for name, slot in slot_modules(model).items()]


def normalise_specs(attn: AttnSpec) -> list[dict[str, Any]]:
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
    slots = slot_modules(model)
    names = list(slots)
    plan: dict[str, tuple[str, dict[str, Any]]] = {}
    for spec in normalise_specs(attn):
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
    against its signature. ``pretrained``: a local weights file, loaded after the slots are filled (a
    backbone may name its own instead, as ``pretrained_file``: timm's ``pretrained_cfg_overlay``).
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
    own_file = getattr(model, "pretrained_file", None)  # a family's own way to name weights (timm's overlay file)
    if own_file is not None and pretrained is not None:
        raise BadValueError(f"backbone {backbone!r} got weights twice: pretrained={str(pretrained)!r} and its own "
                         f"{own_file!r} (pretrained_cfg_overlay); give one")
    pretrained = pretrained if pretrained is not None else own_file
    if pretrained is not None:
        model.pretrained_report = load_pretrained(model, pretrained)
    return model
