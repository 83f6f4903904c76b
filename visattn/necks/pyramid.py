"""Pick a backbone's stride-8/16/32 maps, or make them from a plain ViT's single stride-16 map (ViTDet's way)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from visattn.backbones.base import StageInfo
from visattn.errors import BadValueError

PYRAMID_STRIDES = (8, 16, 32)


class PyramidInputs(nn.Module):
    """Backbone stage outputs -> three maps at strides 8, 16, 32; ``out_channels`` says their widths.

    A backbone with stages at all three strides (ResNet, Swin, CSP) has them selected by ``stage_info`` (the last
    stage at each stride, when there are several).
    A backbone with a stride-16 map but not the others (ViT/16) gets ViTDet's simple feature pyramid
    (Li et al., 2022): stride 8 by a 2x2 stride-2 transposed conv to half the channels, stride 16 as is,
    stride 32 by 2x2 max-pooling.
    """

    def __init__(self, stage_info: Sequence[StageInfo]) -> None:
        super().__init__()
        strides = [info.stride for info in stage_info]
        self.simple = not all(s in strides for s in PYRAMID_STRIDES)
        # the deepest stage at each stride: a timm ViT reports every block at stride 16
        last = {stride: index for index, stride in enumerate(strides)}
        if not self.simple:
            self.indices = [last[s] for s in PYRAMID_STRIDES]
            self.out_channels = tuple(stage_info[i].channels for i in self.indices)
            return
        if 16 not in strides:
            names = ", ".join(f"{info.name} (stride {info.stride})" for info in stage_info)
            raise BadValueError(
                f"a detection neck needs backbone maps at strides {PYRAMID_STRIDES}, or a stride-16 map to build "
                f"them from (ViTDet's simple pyramid); this backbone has: {names}"
            )
        self.indices = [last[16]]
        channels = stage_info[self.indices[0]].channels
        half = max(1, channels // 2)
        self.up = nn.ConvTranspose2d(channels, half, kernel_size=2, stride=2)
        self.down = nn.MaxPool2d(kernel_size=2, stride=2)
        self.out_channels = (half, channels, channels)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if not self.simple:
            return [features[i] for i in self.indices]
        x = features[self.indices[0]]  # (B, C, H/16, W/16)
        return [self.up(x), x, self.down(x)]  # (B, C/2, H/8, W/8), (B, C, H/16, W/16), (B, C, H/32, W/32)
