"""Colour scales of attention figures: one per layer (figure row), shared by every image, never stretched.

A map is drawn against its layer's scale, computed over all images of the figure, so two images (and two
panels of one image) can be compared by colour. Non-negative maps (attention mass, gates, Grad-CAM) start
the scale at 0: a nearly uniform map looks nearly uniform instead of spanning the whole colour range. A map
whose values vary by less than ``CONSTANT_SPREAD`` of their size is drawn grey and labelled
``constant (value)``. An STN's sample density is shown relative to uniform sampling (1 = as a plain
resize samples, 0 = never read), on a fixed scale from 0 to at least 2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

CONSTANT_SPREAD = 0.02  # (max - min) below this share of max |value|: drawn as "constant (value)"
DENSITY_TOP = 2.0  # an STN density scale reaches at least twice uniform sampling
ATTENTION_CMAP = "inferno"
DENSITY_CMAP = "viridis"


@dataclass(frozen=True)
class Scale:
    """The colour scale of one layer: its limits, colour map and the colour bar's label."""

    vmin: float
    vmax: float
    cmap: str
    label: str
    name: str = ""  # the layer (figure row) it belongs to

    @property
    def text(self) -> str:
        return f"[{self.vmin:.3g}, {self.vmax:.3g}]"


def constant_value(value: torch.Tensor) -> float | None:
    """The value of a constant or near-constant map (spread below ``CONSTANT_SPREAD`` of its size), else None."""
    low, high = float(value.min()), float(value.max())
    size = max(abs(low), abs(high))
    if high - low <= CONSTANT_SPREAD * size or size < 1e-12:
        return float(value.float().mean())
    return None


def density_ratio(samples: torch.Tensor) -> torch.Tensor:
    """An STN sample density (share of the samples per pixel, sums to 1) -> samples per pixel relative to uniform."""
    return samples * (samples.shape[-1] * samples.shape[-2])


def layer_scale(maps: Iterable[torch.Tensor], *, name: str, density: bool = False,
                unit_range: bool = False) -> Scale:
    """One scale for every map of a layer. ``density``: STN sample densities already as ``density_ratio``;
    ``unit_range``: maps defined on [0, 1] (Grad-CAM)."""
    maps = list(maps)
    varying = [m for m in maps if constant_value(m) is None]
    values = varying or maps
    high = max((float(m.max()) for m in values), default=1.0)
    low = min((float(m.min()) for m in values), default=0.0)
    if density:
        return Scale(0.0, max(DENSITY_TOP, high), DENSITY_CMAP, f"{name}: samples per pixel (1 = uniform)", name)
    if unit_range:
        return Scale(0.0, 1.0, ATTENTION_CMAP, f"{name} (0-1)", name)
    low = min(0.0, low)  # non-negative maps start at 0: a flat map is not stretched
    if high <= low:
        high = low + 1.0
    return Scale(low, high, ATTENTION_CMAP, name, name)
