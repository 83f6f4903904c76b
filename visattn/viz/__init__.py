"""See where attention blocks look: capture their maps, measure them against boxes, draw figures.

The blocks record through ``visattn.layers.record`` and never import this package (``record`` and
``attention_probs`` are re-exported here). Nothing heavy is imported up front either: the figure
functions (matplotlib) load on first use.
"""

from __future__ import annotations

from visattn.lazy import lazy_face
from visattn.viz.capture import AttentionMaps, attention_probs, capture, record

_LAZY = {
    "mass_in_boxes": "visattn.viz.measure",
    "spatial_maps": "visattn.viz.measure",
    "stage_maps": "visattn.viz.measure",
    "box_mass_report": "visattn.viz.measure",
    "grad_cam": "visattn.viz.gradcam",
    "write_figures": "visattn.viz.figures",
}
__getattr__, __dir__ = lazy_face(__name__, _LAZY)

__all__ = ["AttentionMaps", "attention_probs", "capture", "record", *_LAZY]
