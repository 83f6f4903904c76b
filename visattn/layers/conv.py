"""YOLOv8's convolution blocks: ``ConvNormAct``, the C2f CSP block (with an attention slot at its end) and SPPF.

Module names follow Ultralytics (``conv``/``bn``/``act``, ``cv1``/``cv2``/``m``) so their checkpoints map
onto these key for key.
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.layers.helpers import require
from visattn.layers.slot import AttentionSlot

BN_EPS = 1e-3  # YOLOv8's BatchNorm settings
BN_MOMENTUM = 0.03


class ConvNormAct(nn.Module):
    """Conv2d (no bias, 'same' padding for odd kernels) + BatchNorm2d + SiLU (or no activation)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        *,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        require(in_channels >= 1, "ConvNormAct", "in_channels", ">= 1", in_channels)
        require(out_channels >= 1, "ConvNormAct", "out_channels", ">= 1", out_channels)
        require(kernel_size >= 1, "ConvNormAct", "kernel_size", ">= 1", kernel_size)
        require(stride >= 1, "ConvNormAct", "stride", ">= 1", stride)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 ``ConvNormAct``; adds the input when ``shortcut`` and the channel counts agree."""

    def __init__(self, in_channels: int, out_channels: int, *, shortcut: bool = True, expansion: float = 1.0) -> None:
        super().__init__()
        hidden = max(1, int(out_channels * expansion))
        self.cv1 = ConvNormAct(in_channels, hidden, 3)
        self.cv2 = ConvNormAct(hidden, out_channels, 3)
        self.add = shortcut and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cv2(self.cv1(x))
        return x + out if self.add else out


class C2f(nn.Module):
    """YOLOv8's CSP block: 1x1 conv to 2*c, split in halves, ``depth`` bottlenecks each appending its output,
    concat of all (2 + depth) parts, 1x1 fuse, then ``slot`` (an ``AttentionSlot`` with role ``slot_role``:
    "csp" in a neck, "block" in the CSP backbone)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        depth: int = 1,
        shortcut: bool = False,
        expansion: float = 0.5,
        slot_role: str = "csp",
    ) -> None:
        super().__init__()
        require(depth >= 1, "C2f", "depth", ">= 1", depth)
        require(0.0 < expansion <= 1.0, "C2f", "expansion", "in (0, 1]", expansion)
        self.hidden = max(1, int(out_channels * expansion))
        self.cv1 = ConvNormAct(in_channels, 2 * self.hidden, 1)
        self.cv2 = ConvNormAct((2 + depth) * self.hidden, out_channels, 1)
        self.m = nn.ModuleList(Bottleneck(self.hidden, self.hidden, shortcut=shortcut) for _ in range(depth))
        self.slot = AttentionSlot(out_channels, role=slot_role)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).chunk(2, dim=1))  # 2 x (B, c, H, W)
        for block in self.m:
            parts.append(block(parts[-1]))
        return self.slot(self.cv2(torch.cat(parts, dim=1)))  # cat: (B, (2 + depth) * c, H, W)


class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: 1x1 conv to half, three chained 5x5 max-pools, concat of the four, 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 5) -> None:
        super().__init__()
        require(kernel_size >= 1 and kernel_size % 2 == 1, "SPPF", "kernel_size", "an odd int >= 1", kernel_size)
        hidden = max(1, in_channels // 2)
        self.cv1 = ConvNormAct(in_channels, hidden, 1)
        self.cv2 = ConvNormAct(hidden * 4, out_channels, 1)
        self.m = nn.MaxPool2d(kernel_size, stride=1, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.cv1(x)]
        for _ in range(3):
            parts.append(self.m(parts[-1]))
        return self.cv2(torch.cat(parts, dim=1))  # cat: (B, 4 * hidden, H, W)
