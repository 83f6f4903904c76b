"""Decoupled anchor-free detection head (YOLOv8/TOOD style) and the box geometry shared with the loss.

Every cell of every level is an anchor point at its centre. Per level, a class branch (two 3x3
``ConvNormAct`` + 1x1 conv -> ``num_classes`` logits) and a box branch (two 3x3 ``ConvNormAct`` + 1x1
conv) predict left/top/right/bottom distances from the anchor point in units of the level's stride:
with ``reg_max > 1`` as a distribution over 0..reg_max-1 (DFL, its expectation is the distance), with
``reg_max == 1`` directly through a softplus. Boxes are ``centre -/+ distance * stride`` in pixels, xyxy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers import ConvNormAct, require


class FlatOutputs(NamedTuple):
    """The head's per-level maps flattened over anchors (A = sum of H*W over levels)."""

    box_logits: torch.Tensor  # (B, A, 4 * reg_max)
    cls_logits: torch.Tensor  # (B, A, num_classes)
    anchors: torch.Tensor  # (A, 2) anchor points (cell centres) in pixels, x then y
    strides: torch.Tensor  # (A, 1) the stride of each anchor's level


def make_anchors(shapes: Sequence[tuple[int, int]], strides: Sequence[int], *, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell-centre anchor points (A, 2) in pixels and their strides (A, 1), level by level, row-major."""
    points, stride_column = [], []
    for (height, width), stride in zip(shapes, strides, strict=True):
        ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * stride  # (H,)
        xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * stride  # (W,)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # each (H, W)
        points.append(torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2))  # (H*W, 2)
        stride_column.append(torch.full((height * width, 1), float(stride), device=device, dtype=dtype))
    return torch.cat(points), torch.cat(stride_column)


def decode_boxes(distances: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """ltrb distances (..., A, 4) in stride units -> xyxy boxes (..., A, 4) in pixels."""
    left_top, right_bottom = distances.chunk(2, dim=-1)  # each (..., A, 2)
    return torch.cat([anchors - left_top * strides, anchors + right_bottom * strides], dim=-1)


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor, strides: torch.Tensor) -> torch.Tensor:
    """xyxy boxes (..., A, 4) in pixels -> ltrb distances (..., A, 4) in stride units (negative if outside)."""
    return torch.cat([anchors - boxes[..., :2], boxes[..., 2:] - anchors], dim=-1) / strides


def box_distances(box_logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """(B, A, 4 * reg_max) box logits -> (B, A, 4) non-negative distances in stride units."""
    if reg_max == 1:
        return F.softplus(box_logits)
    batch, anchors, _ = box_logits.shape
    probs = box_logits.reshape(batch, anchors, 4, reg_max).softmax(-1)  # (B, A, 4, reg_max)
    bins = torch.arange(reg_max, device=box_logits.device, dtype=probs.dtype)  # (reg_max,)
    return (probs * bins).sum(-1)  # (B, A, 4): expectation over the bins


def flatten_outputs(raw: Sequence[torch.Tensor], *, num_classes: int, reg_max: int,
                    strides: Sequence[int]) -> FlatOutputs:
    """Per-level (B, 4*reg_max + C, H, W) maps -> anchor-major logits plus anchor points and strides."""
    shapes = [(x.shape[-2], x.shape[-1]) for x in raw]
    flat = torch.cat([x.flatten(2) for x in raw], dim=2).transpose(1, 2)  # (B, A, 4*reg_max + C)
    box_logits, cls_logits = flat.split([4 * reg_max, num_classes], dim=-1)
    anchors, anchor_strides = make_anchors(shapes, strides, device=flat.device, dtype=torch.float32)
    return FlatOutputs(box_logits, cls_logits, anchors, anchor_strides)


def _branch(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(ConvNormAct(in_channels, hidden, 3), ConvNormAct(hidden, hidden, 3),
                         nn.Conv2d(hidden, out_channels, 1))


class DetectHead(nn.Module):
    """One decoupled class/box branch pair per level; widths as YOLOv8's ``Detect``.

    ``forward``: list of per-level maps -> list of raw (B, 4*reg_max + num_classes, H, W) maps.
    ``decode``: those maps -> (B, A, 4 + num_classes): xyxy boxes in pixels, then class probabilities.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        *,
        num_classes: int,
        reg_max: int = 16,
        prior_prob: float = 0.01,
    ) -> None:
        super().__init__()
        require(num_classes >= 1, "DetectHead", "num_classes", ">= 1", num_classes)
        require(reg_max >= 1, "DetectHead", "reg_max", ">= 1 (1: direct distances, >1: DFL bins)", reg_max)
        require(len(in_channels) == len(strides) >= 1, "DetectHead", "in_channels",
                f"one channel count per stride ({list(strides)})", list(in_channels))
        require(0.0 < prior_prob < 1.0, "DetectHead", "prior_prob", "in (0, 1)", prior_prob)
        self.num_classes = num_classes
        self.reg_max = reg_max
        self.strides = tuple(int(s) for s in strides)
        box_hidden = max(16, in_channels[0] // 4, 4 * reg_max)
        cls_hidden = max(in_channels[0], min(num_classes, 100))
        self.box_branches = nn.ModuleList(_branch(c, box_hidden, 4 * reg_max) for c in in_channels)
        self.cls_branches = nn.ModuleList(_branch(c, cls_hidden, num_classes) for c in in_channels)
        self._init_bias(prior_prob)

    def _init_bias(self, prior_prob: float) -> None:
        """Class logits start at the prior (focal-loss init); box logits at 1.0 (YOLOv8's init)."""
        for box, cls in zip(self.box_branches, self.cls_branches, strict=True):
            nn.init.constant_(box[-1].bias, 1.0)
            nn.init.constant_(cls[-1].bias, -math.log((1.0 - prior_prob) / prior_prob))

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [torch.cat([box(x), cls(x)], dim=1)  # (B, 4*reg_max + C, H, W)
                for x, box, cls in zip(features, self.box_branches, self.cls_branches, strict=True)]

    def flatten(self, raw: Sequence[torch.Tensor]) -> FlatOutputs:
        return flatten_outputs(raw, num_classes=self.num_classes, reg_max=self.reg_max, strides=self.strides)

    def decode(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        """Raw maps -> (B, A, 4 + num_classes): boxes xyxy in pixels and sigmoid class scores."""
        flat = self.flatten(raw)
        distances = box_distances(flat.box_logits, self.reg_max)  # (B, A, 4)
        boxes = decode_boxes(distances, flat.anchors.to(distances.dtype), flat.strides.to(distances.dtype))
        return torch.cat([boxes, flat.cls_logits.sigmoid()], dim=-1)
