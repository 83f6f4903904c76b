"""Plug-in attention blocks, one per file, registered by name.

Adding a block: write ``visattn/attention/<name>.py`` with a class decorated by
``@ATTENTION.register("<name>")`` (``from visattn.registry import ATTENTION``) whose ``__init__`` takes
``channels`` first and keyword-only tunables after, and add one ``ATTENTION.declare`` line below.

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

Under mixed precision, compute sensitive parts in float32 with the helpers of ``visattn.layers.precision``: a gate
pools with ``mean_f32``/``amax_f32`` (float32 statistics without a float32 copy of the map), runs its layers under
``gate_precision`` and multiplies with ``apply_gate``; a block that needs the whole map in float32 uses
``full_precision`` and casts its result back to the input's dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from visattn.errors import BadValueError
from visattn.registry import ATTENTION

if TYPE_CHECKING:
    from torch import nn

# One line per block file: the names it registers. Listing them imports nothing (torch neither); a file is
# imported when one of its blocks is first built.
ATTENTION.declare("visattn.attention.cbam", "cbam", "channel_gate", "spatial_gate")
ATTENTION.declare("visattn.attention.eca", "eca")
ATTENTION.declare("visattn.attention.identity", "none")
ATTENTION.declare("visattn.attention.mhsa", "mhsa")
ATTENTION.declare("visattn.attention.se", "se")
ATTENTION.declare("visattn.attention.stn", "stn")


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


__all__ = ["build_attention", "list_attention"]
