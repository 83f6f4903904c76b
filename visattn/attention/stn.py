"""Spatial Transformer (Jaderberg et al., 2015)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers import require
from visattn.registry import ATTENTION
from visattn.viz.capture import record

TRANSFORMS = {"affine": 6, "translation_scale": 3}


@ATTENTION.register("stn")
class SpatialTransformer(nn.Module):
    """A localisation net (conv-pool-conv-pool-FC) predicts a transform; the input is resampled with it.

    Pooling is adaptive average pooling (to ``pool_size`` then ``pool_size // 2``), so any H, W >= 1 works;
    average rather than the paper's max pooling because adaptive max pooling to a size that does not divide
    the input (or is larger than it) does not export to ONNX. The last
    layer starts at the identity transform, so an untrained block returns its input.
    ``transform``: "affine" (6 parameters) or "translation_scale" (isotropic scale and shift, 3).
    """

    _capture: dict | None = None  # set by visattn.viz.capture while capturing

    def __init__(
        self,
        channels: int,
        *,
        hidden: int = 32,
        pool_size: int = 8,
        transform: str = "affine",
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        require(isinstance(hidden, int) and hidden >= 1, "stn", "hidden", "an int >= 1", hidden)
        require(isinstance(pool_size, int) and pool_size >= 2, "stn", "pool_size", "an int >= 2", pool_size)
        require(transform in TRANSFORMS, "stn", "transform", f"one of {sorted(TRANSFORMS)}", transform)
        require(padding_mode in ("zeros", "border", "reflection"), "stn", "padding_mode",
                "one of ['border', 'reflection', 'zeros']", padding_mode)
        self.transform = transform
        self.padding_mode = padding_mode
        small = max(pool_size // 2, 1)
        self.localization = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=3, padding=1),
            nn.AdaptiveAvgPool2d(pool_size),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=3, padding=1),
            nn.AdaptiveAvgPool2d(small),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(hidden * small * small, hidden),
            nn.ReLU(inplace=True),
        )
        self.fc_theta = nn.Linear(hidden, TRANSFORMS[transform])
        nn.init.zeros_(self.fc_theta.weight)
        with torch.no_grad():
            if transform == "affine":
                self.fc_theta.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]))
            else:
                self.fc_theta.bias.copy_(torch.tensor([1.0, 0.0, 0.0]))

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """The predicted affine matrix, (B, 2, 3), in ``affine_grid``'s normalised coordinates."""
        params = self.fc_theta(self.localization(x))  # (B, 6) or (B, 3)
        if self.transform == "affine":
            return params.view(-1, 2, 3)
        scale, shift = params[:, :1], params[:, 1:]  # (B, 1), (B, 2)
        zero = torch.zeros_like(scale)
        row_x = torch.cat([scale, zero, shift[:, :1]], dim=1)
        row_y = torch.cat([zero, scale, shift[:, 1:]], dim=1)
        return torch.stack([row_x, row_y], dim=1)  # (B, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = self.theta(x)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        record(self, "theta", theta)
        record(self, "grid", grid)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)
