"""Registered backbones. Backbones never import attention code: they declare ``AttentionSlot``s."""

from visattn.lazy import lazy_face
from visattn.registry import BACKBONES

# One line per backbone file: the names it registers (listed without importing the file; see visattn.registry).
BACKBONES.declare("visattn.backbones.csp", "csp_n", "csp_s")
BACKBONES.declare("visattn.backbones.resnet", "resnet18", "resnet34", "resnet50", "resnet101")
BACKBONES.declare("visattn.backbones.swin", "swin_s", "swin_t")
BACKBONES.declare("visattn.backbones.vit", "vit_base", "vit_small", "vit_tiny")
BACKBONES.declare_family("visattn.backbones.timm_family", "timm", "timm:<name> (any of timm.list_models())")


def list_backbones() -> list[str]:
    """Sorted names of every registered backbone (prefix families such as ``timm:<name>`` are not enumerated:
    ``BACKBONES.families()`` describes them)."""
    return BACKBONES.names()


__getattr__, __dir__ = lazy_face(__name__, {"Backbone": "visattn.backbones.base",
                                            "StageInfo": "visattn.backbones.base"})

__all__ = ["Backbone", "StageInfo", "list_backbones"]
