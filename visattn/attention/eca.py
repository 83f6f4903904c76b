"""Efficient Channel Attention (Wang et al., 2020)."""

from __future__ import annotations

import math

import torch
from torch import nn

from visattn.layers import require
from visattn.layers.gate import check_init, gate, zero_
from visattn.layers.precision import apply_gate, autocast_on, gate_precision, mean_f32
from visattn.layers.record import record
from visattn.registry import ATTENTION


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """The paper's adaptive kernel: |log2(C)/gamma + beta/gamma|, made odd, at least 3."""
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


@ATTENTION.register("eca")
class EfficientChannelAttention(nn.Module):
    """Global average pool, 1D conv (no bias) across channels, sigmoid gate.

    ``init="identity"`` zero-initialises the conv and gates with ``2 * sigmoid`` (see visattn.layers.gate): the
    block then returns its input exactly until it trains.
    """

    _capture: dict | None = None  # see visattn.layers.record (pointed at a store while capturing)

    def __init__(
        self, channels: int, *, kernel_size: int | None = None, gamma: float = 2.0, beta: float = 1.0,
        init: str = "paper",
    ) -> None:
        super().__init__()
        check_init("eca", init)
        require(gamma > 0, "eca", "gamma", "> 0", gamma)
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        require(
            isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1,
            "eca", "kernel_size", "an odd int >= 1 (or None for the adaptive size)", kernel_size,
        )
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.init = init
        if init == "identity":
            zero_(self.conv)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        batch, upcast = x.shape[0], autocast_on(x)
        with gate_precision(x):  # the gate in float32 under mixed precision, on the pooled (B, 1, C) statistics
            squeezed = mean_f32(x, (2, 3), upcast=upcast).view(batch, 1, -1)  # (B, 1, C)
            logits = self.conv(squeezed).view(batch, -1, 1, 1)  # (B, C, 1, 1)
            return gate(logits, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.channel_weights(x)  # (B, C, 1, 1)
        record(self, "channel", weights.flatten(1))
        return apply_gate(x, weights)
