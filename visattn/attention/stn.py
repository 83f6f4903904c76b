"""Spatial Transformer (Jaderberg et al., 2015)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers import require
from visattn.layers.gate import check_init
from visattn.layers.precision import full_precision
from visattn.layers.record import record
from visattn.registry import ATTENTION

TRANSFORMS = {"affine": 6, "translation_scale": 3}
PADDING_MODES = ("border", "reflection", "zeros")
STAT_NAMES = ("scale", "scale_min", "shear", "translation", "outside")


@ATTENTION.register("stn")
class SpatialTransformer(nn.Module):
    """A localisation net (conv-pool-conv-pool-FC) predicts a transform; the input is resampled with it.

    Pooling is adaptive average pooling (to ``pool_size`` then ``pool_size // 2``), so any H, W >= 1 works;
    average rather than the paper's max pooling because adaptive max pooling to a size that does not divide
    the input (or is larger than it) does not export to ONNX. The last
    layer starts at the identity transform, so an untrained block returns its input (as in the paper; ``init``
    is accepted for the common block interface, and "paper" and "identity" are the same).
    ``transform``: "affine" (6 parameters) or "translation_scale" (isotropic scale and shift, 3).

    ``padding_mode`` (where the grid leaves the input) defaults to "border", not the paper's zeros: the
    block sees *normalised* images (or features), where 0 is mean grey, so zero padding paints a frame
    halfway to ink around any shifted or zoomed-out view. Border padding repeats the edge (background on
    most images) and works in every slot without knowing the normalisation; padding in pixel space would
    tie the block to one data pipeline's mean/std and to the input slot.

    ``loc_lr_scale`` multiplies the learning rate of the localisation net and ``fc_theta`` (declared
    through :meth:`lr_scales`, read by ``visattn.tasks.common.make_optimizer``). The default 0.1 keeps
    the transform from drifting off the image within an epoch at the classifier's learning rate (one
    AdamW step moves every theta entry by about the learning rate); set it from the config with
    ``attn: {block: stn, at: input, args: {loc_lr_scale: 1.0}}``.

    ``loc_size`` (default None: the localisation net sees the full-resolution input, as before) average-pools
    the localisation net's input to at most ``loc_size`` x ``loc_size`` first; the resampling still reads the full
    input. The localisation net is most of the block's FLOPs (its first conv runs at the input's resolution), and
    predicting six numbers needs no fine detail: the STN paper's localisation nets are small networks too. With
    ``loc_size: 32`` on the flagship's 64 px input the net's first conv costs a quarter (benchmarks/README.md,
    "attention tax"); it is an option because it changes what the block computes.

    While training, the block averages statistics of theta over the batches it sees; :meth:`epoch_stats`
    returns and resets them (logged per epoch by ``visattn.tasks.monitors.BlockStatsMonitor``), and
    :meth:`stats_warning` names a degenerate grid.
    """

    _capture: dict | None = None  # see visattn.layers.record (pointed at a store while capturing)

    def __init__(
        self,
        channels: int,
        *,
        hidden: int = 32,
        pool_size: int = 8,
        transform: str = "affine",
        padding_mode: str = "border",
        loc_lr_scale: float = 0.1,
        loc_size: int | None = None,
        init: str = "paper",
    ) -> None:
        super().__init__()
        check_init("stn", init)
        require(isinstance(hidden, int) and hidden >= 1, "stn", "hidden", "an int >= 1", hidden)
        require(isinstance(pool_size, int) and pool_size >= 2, "stn", "pool_size", "an int >= 2", pool_size)
        require(transform in TRANSFORMS, "stn", "transform", f"one of {sorted(TRANSFORMS)}", transform)
        require(padding_mode in PADDING_MODES, "stn", "padding_mode", f"one of {list(PADDING_MODES)}",
                padding_mode)
        require(isinstance(loc_lr_scale, (int, float)) and not isinstance(loc_lr_scale, bool)
                and math.isfinite(loc_lr_scale) and loc_lr_scale >= 0, "stn", "loc_lr_scale",
                "a number >= 0 (0 freezes the localisation net)", loc_lr_scale)
        require(loc_size is None or (isinstance(loc_size, int) and not isinstance(loc_size, bool) and loc_size >= 1),
                "stn", "loc_size", "None (full resolution) or an int >= 1", loc_size)
        self.loc_size = loc_size
        self.transform = transform
        self.padding_mode = padding_mode
        self.loc_lr_scale = float(loc_lr_scale)
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
        # running sums of STAT_NAMES and the batch count since the last epoch_stats(); not in the state dict
        self.register_buffer("_stat_sums", torch.zeros(len(STAT_NAMES) + 1), persistent=False)

    def lr_scales(self) -> dict[str, float]:
        """Parameter-name globs (relative to this block) -> factor on the base learning rate."""
        return {"localization.*": self.loc_lr_scale, "fc_theta.*": self.loc_lr_scale}

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
        # all in float32 under mixed precision: a bf16 theta (8-bit mantissa) moves the grid by ~1/256 of
        # the image per unit, about a pixel at 224 px, and the localisation net is cheap next to the backbone
        with full_precision(x) as x32:
            loc_input = x32
            if self.loc_size is not None and max(x.shape[-2:]) > self.loc_size:  # (B, C, <= loc_size, <= loc_size)
                loc_input = F.adaptive_avg_pool2d(x32, (min(x.shape[-2], self.loc_size),
                                                        min(x.shape[-1], self.loc_size)))
            theta = self.theta(loc_input)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
            out = F.grid_sample(x32, grid, mode="bilinear", padding_mode=self.padding_mode,
                                align_corners=False)
        record(self, "theta", theta)
        record(self, "grid", grid)
        if self.training:
            self._accumulate(theta.detach(), grid.detach())
        return out.to(x.dtype)

    @torch.no_grad()
    def _accumulate(self, theta: torch.Tensor, grid: torch.Tensor) -> None:
        linear = theta[:, :, :2]  # (B, 2, 2): output -> input coordinates, so scale < 1 zooms in
        scales = linear.norm(dim=1)  # (B, 2): length of each output axis in the input
        cos_shear = (linear[:, :, 0] * linear[:, :, 1]).sum(1) / scales.prod(1).clamp_min(1e-12)  # (B,)
        stats = torch.stack([
            scales.prod(1).sqrt().mean(),  # geometric mean scale (sqrt of the area factor, ignoring the flip)
            scales.min(1).values.min(),  # the most collapsed axis of the batch
            cos_shear.abs().mean(),  # 0: axes stay perpendicular
            theta[:, :, 2].norm(dim=1).mean(),  # shift of the centre, in half-widths
            (grid.abs() > 1).any(-1).float().mean(),  # share of output pixels sampled outside the input
        ])
        self._stat_sums[:-1] += stats.float()
        self._stat_sums[-1] += 1

    def epoch_stats(self) -> dict[str, float]:
        """Means over the training batches since the last call (``scale_min``: the minimum), then reset.

        Empty when no training batch was seen. ``scale``: geometric mean of the two axis scales (1 =
        identity; < 1 zooms in); ``shear``: |cos| of the angle between the sampled axes; ``translation``:
        shift of the centre in half-widths; ``outside``: share of output pixels sampled off the input.
        """
        sums = self._stat_sums.tolist()
        self._stat_sums.zero_()
        count = sums[-1]
        if not count:
            return {}
        return {name: value / count for name, value in zip(STAT_NAMES, sums[:-1], strict=True)}

    @staticmethod
    def stats_warning(stats: dict[str, float]) -> str | None:
        """Why the grid these statistics describe is degenerate, or None.

        Degenerate: more than half the output sampled off the input (the output is mostly padding), or an
        axis scaled below 0.05 (the whole output samples a few input pixels). Either way the output hardly
        depends on the image, the gradients into theta vanish and the run tends to stay at chance.
        """
        if not stats:
            return None
        reasons = []
        if stats["outside"] > 0.5:
            reasons.append(f"{stats['outside']:.0%} of the output is sampled outside the input")
        if stats["scale_min"] < 0.05:
            reasons.append(f"an axis scale collapsed to {stats['scale_min']:.3g}")
        if not reasons:
            return None
        return (f"degenerate sampling grid: {' and '.join(reasons)} (mean scale {stats['scale']:.3g}, "
                f"translation {stats['translation']:.3g}); the block's output barely depends on the image. "
                "Lower its loc_lr_scale (attn args) or the learning rate.")
