"""The ``none`` block: the baseline of every ablation."""

from __future__ import annotations

import torch
from torch import nn

from visattn.layers.gate import check_init
from visattn.registry import ATTENTION


@ATTENTION.register("none")
class NoAttention(nn.Module):
    """Returns its input; lets a sweep name the baseline like any other block."""

    def __init__(self, channels: int, *, init: str = "paper") -> None:
        super().__init__()
        check_init("none", init)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
