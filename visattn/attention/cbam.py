"""Convolutional Block Attention Module (Woo et al., 2018), as in the official code.

Registered whole (``cbam``) and as its two halves (``channel_gate``, ``spatial_gate``).
Parameters per block: 2*C*C/r + C/r + C (channel MLP) + 98 + 2 (7x7 conv, BatchNorm).

One deviation from the official code: the spatial gate's BatchNorm uses PyTorch's default momentum 0.1,
not 0.01. At 0.01 the running variance needs ~500 steps to forget its initial 1; after the 285 steps of
a short run it was still ~0.057 while the batches showed ~0.0005, so in eval mode the maps spanned only
0.46-0.56 (train mode: 0.05-0.99). The parameter count is unchanged. Gates are computed in float32
under mixed precision from pooled maps accumulated in float32 (visattn.layers.precision); the product is taken
in the activation's dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.layers import require
from visattn.layers.gate import check_init, gate, zero_
from visattn.layers.precision import amax_f32, apply_gate, autocast_on, gate_precision, mean_f32
from visattn.layers.record import record
from visattn.registry import ATTENTION


@ATTENTION.register("channel_gate")
class ChannelGate(nn.Module):
    """Shared MLP (C -> C // r -> C) over the average- and max-pooled descriptors, summed, sigmoid.

    ``init="identity"``: the MLP's last layer starts at zero and the gate is ``2 * sigmoid`` (visattn.layers.gate).
    """

    _capture: dict | None = None  # see visattn.layers.record (pointed at a store while capturing)

    def __init__(self, channels: int, *, reduction: int = 16, init: str = "paper") -> None:
        super().__init__()
        check_init("channel_gate", init)
        require(isinstance(reduction, int) and reduction >= 1, "channel_gate", "reduction", "an int >= 1",
                reduction)
        hidden = max(1, channels // reduction)  # the paper's C // r; one unit at least for narrow maps (as timm)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))
        self.init = init
        if init == "identity":
            zero_(self.mlp[2])

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        upcast = autocast_on(x)
        with gate_precision(x):  # the gate in float32 under mixed precision, on the pooled (B, C) statistics
            avg = self.mlp(mean_f32(x, (2, 3), upcast=upcast))  # (B, C)
            mx = self.mlp(amax_f32(x, (2, 3), upcast=upcast))  # (B, C)
            return gate(avg + mx, self.init)[:, :, None, None]  # (B, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.channel_weights(x)  # (B, C, 1, 1)
        record(self, "channel", weights.flatten(1))
        return apply_gate(x, weights)


@ATTENTION.register("spatial_gate")
class SpatialGate(nn.Module):
    """Channel-wise max and mean, 7x7 conv (no bias), BatchNorm (momentum 0.1, see the module docstring), sigmoid.

    ``init="identity"``: the BatchNorm's scale and shift start at zero, so the logits are 0 in training and in
    eval mode alike, and the gate is ``2 * sigmoid`` (visattn.layers.gate).
    """

    _capture: dict | None = None  # see visattn.layers.record (pointed at a store while capturing)

    def __init__(self, channels: int, *, kernel_size: int = 7, init: str = "paper") -> None:
        super().__init__()
        check_init("spatial_gate", init)
        require(isinstance(kernel_size, int) and kernel_size >= 1 and kernel_size % 2 == 1,
                "spatial_gate", "kernel_size", "an odd int >= 1", kernel_size)
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.1)
        self.init = init
        if init == "identity":
            zero_(self.bn)

    def spatial_map(self, x: torch.Tensor) -> torch.Tensor:
        upcast = autocast_on(x)
        with gate_precision(x):  # the gate in float32 under mixed precision, on the pooled (B, 2, H, W) maps
            pooled = torch.cat([amax_f32(x, 1, keepdim=True, upcast=upcast),
                                mean_f32(x, 1, keepdim=True, upcast=upcast)], dim=1)  # (B, 2, H, W)
            return gate(self.bn(self.conv(pooled)), self.init)  # (B, 1, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.spatial_map(x)  # (B, 1, H, W)
        record(self, "spatial", weights[:, 0])
        return apply_gate(x, weights)


@ATTENTION.register("cbam")
class CBAM(nn.Module):
    """Channel gate, then spatial gate; ``init`` applies to both."""

    def __init__(self, channels: int, *, reduction: int = 16, kernel_size: int = 7, init: str = "paper") -> None:
        super().__init__()
        check_init("cbam", init)
        self.channel_gate = ChannelGate(channels, reduction=reduction, init=init)
        self.spatial_gate = SpatialGate(channels, kernel_size=kernel_size, init=init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial_gate(self.channel_gate(x))
