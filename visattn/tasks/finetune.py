"""What trains when a block goes into a trained network: freezing, frozen BatchNorm statistics, the blocks' lr.

``freeze="backbone"`` trains only the inserted attention blocks and the head: for classification the
classifier (``model.classifier_name``), for detection the neck and the head. ``freeze_bn`` keeps the running
statistics of every BatchNorm outside the blocks as loaded (those layers normalise in eval mode while the rest
trains), as torchvision's detection models do with ``FrozenBatchNorm2d``, but without changing module types,
so checkpoints and exports keep their keys. ``attn_lr_scale`` multiplies the learning rate of every parameter
inside a filled slot, on top of a block's own ``lr_scales()``.
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from visattn.config import FREEZE_CHOICES
from visattn.errors import ConfigError
from visattn.layers import AttentionSlot


def block_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Name prefixes of the parameters inside filled slots (``<slot>.block.``)."""
    return tuple(f"{name}.block." for name, module in model.named_modules()
                 if isinstance(module, AttentionSlot) and module.block is not None)


def _head_prefixes(model: nn.Module) -> tuple[str, ...]:
    if hasattr(model, "neck") and hasattr(model, "head") and hasattr(model, "backbone"):  # a detector
        return ("neck.", "head.")
    classifier = getattr(model, "classifier_name", None)
    return (f"{classifier}.",) if classifier else ()


def freeze_parameters(model: nn.Module, freeze: str) -> list[str]:
    """Set ``requires_grad=False`` on what ``freeze`` freezes; returns the frozen parameter names."""
    if freeze not in FREEZE_CHOICES:
        raise ConfigError(f"freeze must be one of {', '.join(FREEZE_CHOICES)}, got {freeze!r}")
    if freeze == "none":
        return []
    trainable = block_prefixes(model) + _head_prefixes(model)
    frozen = []
    for name, param in model.named_parameters():
        if not name.startswith(trainable):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def norms_outside_blocks(model: nn.Module) -> list[nn.Module]:
    """Every BatchNorm of ``model`` that is not part of an inserted block."""
    blocks = block_prefixes(model)
    return [module for name, module in model.named_modules()
            if isinstance(module, _BatchNorm) and not f"{name}.".startswith(blocks)]


def keep_norms_frozen(norms: list[nn.Module]) -> None:
    """Put ``norms`` back in eval mode (called after every ``train()`` of the task module)."""
    for norm in norms:
        norm.eval()


def attn_lr_scales(model: nn.Module, scale: float) -> dict[str, float]:
    """``{parameter name: scale}`` for every parameter inside a filled slot (empty when ``scale`` is 1)."""
    if scale == 1.0:
        return {}
    blocks = block_prefixes(model)
    return {name: scale for name, _ in model.named_parameters() if name.startswith(blocks)}
