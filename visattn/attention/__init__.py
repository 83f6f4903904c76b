"""Plug-in attention blocks, one per file, registered by name.

Adding a block: write ``visattn/attention/<name>.py`` with a class decorated by
``@register_attention("<name>")`` whose ``__init__`` takes ``channels`` first and keyword-only
tunables after, and add one import line below.

Optional methods a block may define (found by duck typing; the task code never names a block):

* ``no_weight_decay() -> set[str]``: parameter names (relative to the block, globs allowed) the optimiser
  must not decay, as timm models declare (e.g. MHSA's learned position table).
* ``lr_scales() -> dict[str, float]``: name glob -> factor on the base learning rate (e.g. STN's
  localisation net at 0.1x, set by its ``loc_lr_scale`` argument). Both are read by
  ``visattn.tasks.common.make_optimizer``.
* ``epoch_stats() -> dict[str, float]`` (and ``stats_warning(stats) -> str | None``): statistics gathered
  over the training batches of an epoch, logged as ``blocks/<slot>/<name>`` by
  ``visattn.tasks.monitors.BlockStatsMonitor``, which prints a warning line for a message (e.g. STN's
  degenerate sampling grid).

Under mixed precision, compute sensitive parts with ``visattn.layers.precision.full_precision`` and cast
the result back to the input's dtype.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from visattn.errors import BadValueError
from visattn.registry import ATTENTION

register_attention = ATTENTION.register

# One import line per block file (registration happens on import).
from visattn.attention import cbam as _cbam  # noqa: E402,F401
from visattn.attention import eca as _eca  # noqa: E402,F401
from visattn.attention import identity as _identity  # noqa: E402,F401
from visattn.attention import mhsa as _mhsa  # noqa: E402,F401
from visattn.attention import se as _se  # noqa: E402,F401
from visattn.attention import stn as _stn  # noqa: E402,F401


def list_attention() -> list[str]:
    """Sorted names of every registered attention block."""
    return ATTENTION.names()


def build_attention(name: str, channels: int, **kwargs: Any) -> nn.Module:
    """Build the block registered as ``name`` for ``channels`` input channels.

    Keyword arguments are the block's own tunables; an unknown one raises ``TypeError`` listing
    the allowed ones, an invalid value raises ``ValueError`` naming the argument.
    """
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise BadValueError(f"attention block {name!r}: channels must be a positive int, got {channels!r}")
    try:
        return ATTENTION.build(name, channels, **kwargs)
    except ValueError as err:
        if str(err).startswith(f"{name}:"):
            raise
        raise BadValueError(f"{name}: {err}") from err  # a sub-module's message, e.g. cbam's channel_gate


__all__ = ["build_attention", "list_attention", "register_attention"]
