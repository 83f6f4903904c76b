"""Weights from a local file: read any checkpoint format into a state dict, load it into a model with slots, and
report what loading did (what was loaded, what kept its init, what the inserted blocks change)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visattn.errors import BadValueError, UnknownNameError
from visattn.extras import require
from visattn.layers import empty_slots, slot_modules

logger = logging.getLogger("visattn")


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
            slots = list(dict.fromkeys(key.split(".block.", 1)[0] for key in self.attention_initialised))
            named = ", ".join(slots[:3]) + (f", ... ({len(slots)} slots)" if len(slots) > 3 else "")
            parts.append(f"{len(self.attention_initialised)} attention tensors left at init ({named})")
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
            state = require("safetensors.torch", purpose="reading .safetensors weights").load_file(str(path))
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
    slot_prefixes = tuple(f"{n}.block." for n, s in slot_modules(model).items() if s.filled)
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
