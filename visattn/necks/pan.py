"""YOLOv8's PAN-FPN neck (Ultralytics, 2023), on any backbone's stride-8/16/32 maps.

SPPF on the stride-32 map, a top-down path (nearest 2x upsample, concat, C2f) to stride 8, then a
bottom-up path (3x3 stride-2 conv, concat, C2f) back to stride 32. Widths and depths follow
yolov8{n,s,m}.yaml: outputs 256, 512, 1024 base channels (capped at the scale's max) times the width
multiplier, C2f depth round(3 x depth multiplier), no shortcuts. Input widths come from the backbone's
``stage_info``.

Slots: ``out_slots.0``..``2`` on the three outputs (role "neck", the detector's default) and
``<c2f>.slot`` at the end of each of the four C2f blocks (role "csp").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from visattn.backbones.base import StageInfo
from visattn.backbones.csp import scale_depth, scale_width
from visattn.layers import SPPF, AttentionSlot, C2f, ConvNormAct, require
from visattn.necks.pyramid import PYRAMID_STRIDES, PyramidInputs
from visattn.registry import NECKS

# scale -> (depth multiplier, width multiplier, max channels), as in Ultralytics' yolov8.yaml
PAN_SCALES: dict[str, tuple[float, float, int]] = {
    "n": (0.33, 0.25, 1024),
    "s": (0.33, 0.50, 1024),
    "m": (0.67, 0.75, 768),
}


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling as expand + reshape (no index ops; exports as Expand/Reshape)."""
    batch, channels, height, width = x.shape
    x = x[:, :, :, None, :, None].expand(batch, channels, height, 2, width, 2)  # (B, C, H, 2, W, 2)
    return x.reshape(batch, channels, 2 * height, 2 * width)  # (B, C, 2H, 2W)


class PAN(nn.Module):
    """Three backbone maps (strides 8, 16, 32) -> three fused maps of ``out_channels`` at the same strides."""

    def __init__(self, stage_info: Sequence[StageInfo], *, scale: str = "n") -> None:
        super().__init__()
        require(scale in PAN_SCALES, "pan", "scale", f"one of {list(PAN_SCALES)}", scale)
        depth_multiple, width_multiple, max_channels = PAN_SCALES[scale]
        c3, c4, c5 = (scale_width(c, width_multiple, max_channels) for c in (256, 512, 1024))
        depth = scale_depth(3, depth_multiple)
        self.scale = scale
        self.inputs = PyramidInputs(stage_info)
        i3, i4, i5 = self.inputs.out_channels
        self.sppf = SPPF(i5, c5)
        self.top_down4 = C2f(c5 + i4, c4, depth=depth)  # stride 16
        self.top_down3 = C2f(c4 + i3, c3, depth=depth)  # stride 8: output P3
        self.down3 = ConvNormAct(c3, c3, 3, stride=2)
        self.bottom_up4 = C2f(c3 + c4, c4, depth=depth)  # output P4
        self.down4 = ConvNormAct(c4, c4, 3, stride=2)
        self.bottom_up5 = C2f(c4 + c5, c5, depth=depth)  # output P5
        self.out_channels = (c3, c4, c5)
        self.strides = PYRAMID_STRIDES
        self.out_slots = nn.ModuleList(AttentionSlot(c, role="neck") for c in self.out_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        x3, x4, x5 = self.inputs(features)
        p5 = self.sppf(x5)  # (B, c5, H/32, W/32)
        t4 = self.top_down4(torch.cat([upsample2x(p5), x4], dim=1))  # (B, c4, H/16, W/16)
        p3 = self.top_down3(torch.cat([upsample2x(t4), x3], dim=1))  # (B, c3, H/8, W/8)
        p4 = self.bottom_up4(torch.cat([self.down3(p3), t4], dim=1))  # (B, c4, H/16, W/16)
        p5 = self.bottom_up5(torch.cat([self.down4(p4), p5], dim=1))  # (B, c5, H/32, W/32)
        return [slot(p) for slot, p in zip(self.out_slots, (p3, p4, p5), strict=True)]


@NECKS.register("pan")
def build_pan(stage_info: Sequence[StageInfo], *, scale: str = "n") -> PAN:
    """YOLOv8 PAN-FPN at ``scale`` n, s or m on a backbone described by ``stage_info``."""
    return PAN(stage_info, scale=scale)
