"""Squeeze-and-Excitation (Hu et al., 2018)."""

from __future__ import annotations

import torch
from torch import nn

from visattn.layers import make_divisible, require
from visattn.layers.gate import check_init, gate, zero_
from visattn.layers.precision import full_precision
from visattn.layers.record import record
from visattn.registry import ATTENTION


@ATTENTION.register("se")
class SqueezeExcite(nn.Module):
    """Global average pool, 1x1 conv C -> C/r, ReLU, 1x1 conv C/r -> C, sigmoid gate.

    The reduced width is ``channels / reduction`` rounded to a multiple of ``divisor`` as timm's
    ``SEModule`` does, so weights copy one-to-one (``fc1``, ``fc2``).
    ``init="identity"`` zero-initialises ``fc2`` and gates with ``2 * sigmoid`` (see visattn.layers.gate): the
    block then returns its input exactly until it trains.
    """

    _capture: dict | None = None  # see visattn.layers.record (pointed at a store while capturing)

    def __init__(self, channels: int, *, reduction: int = 16, divisor: int = 8, init: str = "paper") -> None:
        super().__init__()
        check_init("se", init)
        require(isinstance(reduction, int) and reduction >= 1, "se", "reduction", "an int >= 1", reduction)
        require(isinstance(divisor, int) and divisor >= 1, "se", "divisor", "an int >= 1", divisor)
        hidden = make_divisible(channels / reduction, divisor, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)
        self.init = init
        if init == "identity":
            zero_(self.fc2)
        if init == "identity_alpha":  # PILOT
            self.alpha = nn.Parameter(torch.zeros(()))

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x) as x:  # the gate in float32 under mixed precision: cheap on the pooled (B, C, 1, 1)
            squeezed = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
            return gate(self.fc2(self.act(self.fc1(squeezed))), self.init, getattr(self, "alpha", None))  # (B, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.channel_weights(x)  # (B, C, 1, 1)
        record(self, "channel", weights.flatten(1))
        return (x * weights).to(x.dtype)
