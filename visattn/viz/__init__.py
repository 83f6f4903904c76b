"""See where attention blocks look: capture their maps, measure them against boxes, draw figures.

The blocks record through ``visattn.layers.record`` and never import this package (``record`` and
``attention_probs`` are re-exported here). Nothing heavy is imported up front either: the figure
functions (matplotlib) load on first use.
"""

from __future__ import annotations

from typing import Any

from visattn.viz.capture import AttentionMaps, attention_probs, capture, record

_LAZY = {
    "mass_in_boxes": "visattn.viz.measure",
    "spatial_maps": "visattn.viz.measure",
    "stage_maps": "visattn.viz.measure",
    "box_mass_report": "visattn.viz.measure",
    "grad_cam": "visattn.viz.gradcam",
    "write_figures": "visattn.viz.figures",
    "visualize_run": "visattn.viz.run",
    "measure_run": "visattn.viz.run",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'visattn.viz' has no attribute {name!r}")


__all__ = ["AttentionMaps", "attention_probs", "capture", "record", *_LAZY]
