"""YOLOv8's CSP backbone (Ultralytics, 2023) without SPPF (the PAN neck owns it), usable for classification too.

Layout: 3x3 stride-2 stem, then four stages, each a 3x3 stride-2 ``ConvNormAct`` and a ``C2f`` with
shortcuts (strides 4, 8, 16, 32). Base channels 64 (stem), 128, 256, 512, 1024 and depths 3, 6, 6, 3 are
scaled by the variant's width and depth multipliers (``csp_n``: 0.25, 0.33; ``csp_s``: 0.50, 0.33).

Slots: ``input`` (on the image), ``stages.I.c2f.slot`` at the end of every C2f (role "block", the default
for classification) and ``stages.I.slot`` after each stage (role "stage"). With one C2f per stage the two
sit back to back; "block" is the C2f's own output, "stage" is what the neck receives.
"""

from __future__ import annotations

import torch
from torch import nn

from visattn.backbones.base import Backbone, StageInfo
from visattn.layers import AttentionSlot, C2f, ConvNormAct, make_divisible, require
from visattn.registry import BACKBONES

BASE_CHANNELS = (64, 128, 256, 512, 1024)  # stem, stage 1..4
BASE_DEPTHS = (3, 6, 6, 3)
# name -> (depth multiplier, width multiplier, max channels) as in Ultralytics' yolov8.yaml
CSP_VARIANTS: dict[str, tuple[float, float, int]] = {
    "csp_n": (0.33, 0.25, 1024),
    "csp_s": (0.33, 0.50, 1024),
}


def scale_width(channels: int, width: float, max_channels: int) -> int:
    """Ultralytics' rule: cap at ``max_channels``, multiply by ``width``, round to a multiple of 8."""
    return make_divisible(min(channels, max_channels) * width, 8)


def scale_depth(depth: int, multiplier: float) -> int:
    """Ultralytics' rule: round(depth * multiplier), at least 1."""
    return max(round(depth * multiplier), 1)


class CSPStage(nn.Module):
    """Stride-2 3x3 conv, C2f with shortcuts, then the stage slot."""

    def __init__(self, in_channels: int, out_channels: int, depth: int) -> None:
        super().__init__()
        self.down = ConvNormAct(in_channels, out_channels, 3, stride=2)
        self.c2f = C2f(out_channels, out_channels, depth=depth, shortcut=True, slot_role="block")
        self.slot = AttentionSlot(out_channels, role="stage")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.slot(self.c2f(self.down(x)))


class CSPBackbone(Backbone):
    classifier_name = "head"

    def __init__(
        self,
        *,
        variant: str = "csp",
        depth_multiple: float,
        width_multiple: float,
        max_channels: int = 1024,
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        require(num_classes >= 0, variant, "num_classes", ">= 0", num_classes)
        require(in_chans >= 1, variant, "in_chans", ">= 1", in_chans)
        require(depth_multiple > 0, variant, "depth_multiple", "> 0", depth_multiple)
        require(width_multiple > 0, variant, "width_multiple", "> 0", width_multiple)
        require(max_channels >= 8, variant, "max_channels", ">= 8", max_channels)
        require(0.0 <= drop_rate < 1.0, variant, "drop_rate", "in [0, 1)", drop_rate)
        self.variant = variant
        self.num_classes = num_classes
        widths = [scale_width(c, width_multiple, max_channels) for c in BASE_CHANNELS]
        depths = [scale_depth(d, depth_multiple) for d in BASE_DEPTHS]

        self.input = AttentionSlot(in_chans, role="input")
        self.stem = ConvNormAct(in_chans, widths[0], 3, stride=2)
        self.stages = nn.Sequential(*(
            CSPStage(widths[index], widths[index + 1], depths[index]) for index in range(len(BASE_DEPTHS))
        ))
        self.stage_info = [
            StageInfo(f"stages.{index}", widths[index + 1], 4 * 2**index) for index in range(len(BASE_DEPTHS))
        ]
        self.num_features = widths[-1]
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int) -> None:
        require(num_classes >= 0, self.variant, "num_classes", ">= 0", num_classes)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(self.input(x))
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(self.input(x)))  # (B, C, H/32, W/32)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.global_pool(x).flatten(1)))  # (B, num_classes)


def _csp_builder(name: str) -> None:
    depth_multiple, width_multiple, max_channels = CSP_VARIANTS[name]

    def build(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> CSPBackbone:
        return CSPBackbone(variant=name, depth_multiple=depth_multiple, width_multiple=width_multiple,
                           max_channels=max_channels, num_classes=num_classes, in_chans=in_chans,
                           drop_rate=drop_rate)

    build.__name__ = name
    build.__doc__ = (f"{name}: YOLOv8 CSP backbone, depth x{depth_multiple}, width x{width_multiple} "
                     f"(stage channels {[scale_width(c, width_multiple, max_channels) for c in BASE_CHANNELS[1:]]}).")
    BACKBONES.register(name)(build)


for _name in CSP_VARIANTS:
    _csp_builder(_name)
