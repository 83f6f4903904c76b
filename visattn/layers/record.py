"""The recording primitive attention blocks call; ``visattn.viz.capture`` turns it on and reads the results.

It lives here, below the blocks and backbones, so that they need not import the figure code: ``viz``
only consumes what is recorded. A block that can report something declares a class attribute
``_capture: dict | None = None`` (the is-capturing flag and the store in one) and calls
``record(self, name, tensor)``. While a capture is active, :func:`start_recording` points that
attribute, on the instance, at the capture's entry for the block; otherwise ``record`` returns after
one attribute check, so the forward is unchanged and no hook is installed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def record(module: nn.Module, name: str, value: Any) -> None:
    """Store ``value`` (detached) under ``name`` in ``module``'s capture entry; nothing when not capturing."""
    store = module._capture
    if store is None:
        return
    store[name] = value.detach() if isinstance(value, torch.Tensor) else value


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask), the probabilities SDPA does not return: (..., Nq, Nk)."""
    with torch.no_grad():
        logits = (q.float() * q.shape[-1] ** -0.5) @ k.float().transpose(-2, -1)  # (..., Nq, Nk)
        if mask is not None:
            logits = logits + mask.float()
        return logits.softmax(-1)


def can_record(module: nn.Module) -> bool:
    """Whether ``module``'s class declares the ``_capture`` slot, i.e. it calls :func:`record`."""
    return hasattr(type(module), "_capture")


def is_recording(module: nn.Module) -> bool:
    """Whether a capture currently points ``module`` at an entry."""
    return module.__dict__.get("_capture") is not None


def start_recording(module: nn.Module, store: dict[str, Any]) -> None:
    """Make ``module``'s :func:`record` calls write into ``store`` (an instance attribute over the class's None)."""
    module._capture = store


def stop_recording(module: nn.Module) -> None:
    """Back to the class attribute (None): ``record`` is a no-op again."""
    module.__dict__.pop("_capture", None)
