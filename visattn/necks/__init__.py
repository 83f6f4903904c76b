"""Registered detection necks: ``NECKS.build(name, stage_info, scale=...)`` -> a module with ``out_channels``
and ``strides`` that maps a backbone's ``forward_stages`` outputs to one map per stride."""

from visattn.lazy import lazy_face
from visattn.registry import NECKS

NECKS.declare("visattn.necks.pan", "pan")  # one line per neck file (see visattn.registry)


def list_necks() -> list[str]:
    """Sorted names of every registered neck."""
    return NECKS.names()


__getattr__, __dir__ = lazy_face(__name__, {"PAN": "visattn.necks.pan", "PAN_SCALES": "visattn.necks.pan",
                                            "PyramidInputs": "visattn.necks.pyramid"})

__all__ = ["PAN", "PAN_SCALES", "PyramidInputs", "list_necks"]
