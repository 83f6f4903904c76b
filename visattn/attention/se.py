"""Squeeze-and-Excitation (Hu et al., 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers import make_divisible, require
from visattn.layers.gate import check_init, gate, zero_
from visattn.layers.precision import apply_gate, autocast_on, gate_precision, mean_f32
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

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        upcast = autocast_on(x)
        with gate_precision(x):  # the gate in float32 under mixed precision, on the pooled (B, C) statistics
            if not upcast:  # fp32 (and bf16-weight) models: the published form, bit for bit timm's SEModule
                squeezed = mean_f32(x, (2, 3), keepdim=True, upcast=False)  # (B, C, 1, 1)
                return gate(self.fc2(self.act(self.fc1(squeezed))), self.init)
            # under mixed precision the 1x1 convs of the 1x1 map run as the matrix products they are: there a
            # convolution kernel call costs ~10x a linear one (benchmarks/README.md, "attention tax")
            squeezed = mean_f32(x, (2, 3), upcast=True)  # (B, C) float32
            hidden = self.act(F.linear(squeezed, self.fc1.weight.flatten(1), self.fc1.bias))  # (B, C/r)
            logits = F.linear(hidden, self.fc2.weight.flatten(1), self.fc2.bias)  # (B, C)
            return gate(logits, self.init)[:, :, None, None]  # (B, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.channel_weights(x)  # (B, C, 1, 1)
        record(self, "channel", weights.flatten(1))
        return apply_gate(x, weights)
