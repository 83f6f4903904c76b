"""Registered backbones. Backbones never import attention code: they declare ``AttentionSlot``s."""

from visattn.backbones import csp as _csp  # noqa: F401
from visattn.backbones import resnet as _resnet  # noqa: F401
from visattn.backbones import swin as _swin  # noqa: F401
from visattn.backbones import timm_family as _timm_family  # noqa: F401
from visattn.backbones import vit as _vit  # noqa: F401
from visattn.backbones.base import Backbone, StageInfo
from visattn.registry import BACKBONES


def list_backbones() -> list[str]:
    """Sorted names of every registered backbone (prefix families such as ``timm:<name>`` are not enumerated:
    ``BACKBONES.families()`` describes them)."""
    return BACKBONES.names()


__all__ = ["Backbone", "StageInfo", "list_backbones"]
