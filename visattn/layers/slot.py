"""Attention slots: named, empty places in a backbone or neck that the builder fills with a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from visattn.errors import BadValueError

SLOT_ROLES = ("block", "after_block", "stage", "input", "neck", "csp")


class AttentionSlot(nn.Module):
    """An identity that knows its channel count until the builder puts a block in it.

    ``role`` tells the builder what kind of place this is ("block": inside a residual block,
    "after_block": after a whole block (timm models), "stage": after a stage, "input": on the image,
    "neck"/"csp": in a detection neck). A filled slot holds its block as ``self.block``, so its
    parameters live under ``<slot name>.block.``.
    """

    def __init__(self, channels: int, *, role: str = "block") -> None:
        super().__init__()
        if role not in SLOT_ROLES:
            raise BadValueError(f"AttentionSlot: unknown role {role!r}; valid roles: {', '.join(SLOT_ROLES)}")
        self.channels = int(channels)
        self.role = role
        self.block: nn.Module | None = None
        self.block_name: str | None = None

    @property
    def filled(self) -> bool:
        return self.block is not None

    def fill(self, block: nn.Module, name: str) -> None:
        self.block = block
        self.block_name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.block is None:
            return x
        return self.block(x)

    def extra_repr(self) -> str:
        state = self.block_name if self.block is not None else "empty"
        return f"channels={self.channels}, role={self.role}, {state}"


def slot_modules(model: nn.Module) -> dict[str, AttentionSlot]:
    """Every slot of ``model`` by its name (module path), filled or empty, in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, AttentionSlot)}


@contextlib.contextmanager
def empty_slots(model: nn.Module) -> Iterator[None]:
    """Run ``model`` inside the ``with`` as if every slot were empty: the network without its blocks."""
    filled = [slot for slot in model.modules() if isinstance(slot, AttentionSlot) and slot.block is not None]
    blocks = [slot.block for slot in filled]
    for slot in filled:
        slot.block = None
    try:
        yield
    finally:
        for slot, block in zip(filled, blocks, strict=True):
            slot.block = block


def apply_slot_nhwc(slot: AttentionSlot, x: torch.Tensor) -> torch.Tensor:
    """Apply ``slot`` to a channels-last map (B, H, W, C); free when the slot is empty."""
    if slot.block is None:
        return x
    y = slot(x.permute(0, 3, 1, 2))  # (B, C, H, W)
    return y.permute(0, 2, 3, 1)  # (B, H, W, C)


def apply_slot_tokens(
    slot: AttentionSlot, x: torch.Tensor, grid_size: tuple[int, int], num_prefix_tokens: int
) -> torch.Tensor:
    """Apply ``slot`` to the patch tokens of (B, prefix + H*W, C) laid out as a grid; prefix tokens pass untouched."""
    if slot.block is None:
        return x
    height, width = grid_size
    prefix, patches = x[:, :num_prefix_tokens], x[:, num_prefix_tokens:]
    batch, _, channels = patches.shape
    grid = patches.transpose(1, 2).reshape(batch, channels, height, width)  # (B, C, H, W)
    patches = slot(grid).flatten(2).transpose(1, 2)  # (B, H*W, C)
    return torch.cat([prefix, patches], dim=1)
