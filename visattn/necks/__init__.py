"""Registered detection necks: ``NECKS.build(name, stage_info, scale=...)`` -> a module with ``out_channels``
and ``strides`` that maps a backbone's ``forward_stages`` outputs to one map per stride."""

from visattn.necks import pan as _pan  # noqa: F401
from visattn.necks.pan import PAN, PAN_SCALES
from visattn.necks.pyramid import PyramidInputs
from visattn.registry import NECKS


def list_necks() -> list[str]:
    """Sorted names of every registered neck."""
    return NECKS.names()


__all__ = ["PAN", "PAN_SCALES", "PyramidInputs", "list_necks"]
