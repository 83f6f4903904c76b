"""PNG figures of captured attention: overlays, channel-weight strips, STN warps with their sampling grids, Grad-CAM.

Drawn on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global backend switch).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from visattn.rundir import write_figure
from visattn.viz.capture import AttentionMaps, capture
from visattn.viz.gradcam import eval_mode, grad_cam
from visattn.viz.measure import channel_maps, model_stages, spatial_maps, stage_maps

PER_SLOT_LIMIT = 8  # more spatial maps than this: one overlay per stage instead of per slot
MAX_STRIPS = 24  # channel-weight strips drawn per image
COLUMNS = 6
Panel = tuple[str, Callable[[Axes], None]]


@dataclass
class Analysis:
    """Everything drawn for a batch: captured maps, spatial maps per key and per stage, channel weights, Grad-CAM."""

    maps: AttentionMaps
    spatial: dict[str, torch.Tensor]  # key -> (B, h, w)
    stages: dict[str, torch.Tensor]  # stage -> (B, H, W), each map normalised to sum 1 before averaging
    channels: dict[str, torch.Tensor]  # key -> (B, C)
    thetas: dict[str, torch.Tensor]  # STN key -> (B, 2, 3)
    gradcam: torch.Tensor | None  # (B, H, W) in [0, 1]
    logits: torch.Tensor


def to_inputs(images: np.ndarray, *, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (n, H, W, 3) -> normalised float (n, 3, H, W), as the evaluation transform makes them."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(255.0).permute(0, 3, 1, 2)  # (n, 3, H, W)
    mean_t = torch.tensor(list(mean), dtype=torch.float32)[None, :, None, None]
    std_t = torch.tensor(list(std), dtype=torch.float32)[None, :, None, None]
    return (x - mean_t) / std_t


def analyse(
    model: nn.Module, inputs: torch.Tensor, *, pattern: str | None = None, with_gradcam: bool = True
) -> Analysis:
    """Run ``model`` once under capture (and once more for Grad-CAM), in eval mode, on normalised ``inputs``."""
    device = next(model.parameters()).device
    inputs = inputs.to(device)
    size = (inputs.shape[-2], inputs.shape[-1])
    with eval_mode(model):
        with torch.no_grad(), capture(model) as maps:
            logits = model(inputs)
        cam = None
        if with_gradcam:
            try:
                cam = grad_cam(model, inputs)[0].cpu()
            except ValueError:  # not a classifier over a visattn backbone: no reference map
                cam = None
    spatial = {k: v.float().cpu() for k, v in spatial_maps(maps, pattern=pattern).items()}
    thetas = {k: e["theta"].cpu() for k, e in maps.items()
              if "theta" in e and (pattern is None or fnmatch.fnmatchcase(k, pattern))}
    stages = stage_maps(spatial, model_stages(model), size, slot_keys=maps.slot_keys)
    return Analysis(maps=maps, spatial=spatial, stages=stages,
                    channels={k: v.float().cpu() for k, v in channel_maps(maps, pattern=pattern).items()},
                    thetas=thetas, gradcam=cam, logits=logits.detach().cpu())


def warp(image: np.ndarray, theta: torch.Tensor) -> np.ndarray:
    """What an STN with ``theta`` (2, 3) makes of the uint8 (H, W, 3) image."""
    x = torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)[None]  # (1, 3, H, W)
    grid = F.affine_grid(theta[None].float(), list(x.shape), align_corners=False)  # (1, H, W, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0].permute(1, 2, 0).clamp(0, 255).byte().numpy()  # (H, W, 3)


def _heat(value: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, float, float]:
    """(h, w) map -> bilinear (H, W) scaled to [0, 1], with the map's own min and max."""
    low, high = float(value.min()), float(value.max())
    up = F.interpolate(value[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    return ((up - low) / max(high - low, 1e-12)).numpy(), low, high


def _plain(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def draw_overlay(ax: Axes, image: np.ndarray, value: torch.Tensor, title: str) -> None:
    heat, low, high = _heat(value, image.shape[:2])
    ax.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=255)
    ax.imshow(heat, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    ax.set_title(f"{title}\n[{low:.2g}, {high:.2g}]", fontsize=7)
    _plain(ax)


def draw_box(ax: Axes, box: Sequence[float] | None) -> None:
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1))


def draw_sampling_grid(ax: Axes, theta: torch.Tensor, size: tuple[int, int], lines: int = 9) -> None:
    """The STN's sampling grid on its input: the output's outline (red) and ``lines`` grid lines per axis."""
    height, width = size
    ticks = torch.linspace(-1.0, 1.0, lines)
    ys, xs = torch.meshgrid(ticks, ticks, indexing="ij")
    points = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1) @ theta.float().T  # (lines, lines, 2) normalised
    px = ((points[..., 0] + 1) * width / 2 - 0.5).numpy()  # align_corners=False: -1 is the outer pixel edge
    py = ((points[..., 1] + 1) * height / 2 - 0.5).numpy()
    for i in range(lines):
        edge = i in (0, lines - 1)
        style = dict(color="red" if edge else "yellow", linewidth=1.2 if edge else 0.5)
        ax.plot(px[i], py[i], **style)
        ax.plot(px[:, i], py[:, i], **style)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)


def draw_strip(ax: Axes, weights: torch.Tensor, name: str) -> None:
    ax.imshow(weights[None].numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=6)


def caption(analysis: Analysis, index: int, label: int | None, class_names: Sequence[str] | None) -> str:
    def name(c: int) -> str:
        return str(class_names[c]) if class_names and c < len(class_names) else str(c)

    pred = int(analysis.logits[index].argmax()) if analysis.logits.ndim == 2 else None
    parts = [] if label is None else [f"label {name(label)}"]
    if pred is not None:
        parts.append(f"pred {name(pred)}")
    return ", ".join(parts)


def overlay_sources(analysis: Analysis) -> dict[str, torch.Tensor]:
    """The maps drawn per image: every slot's when there are few, else the per-stage averages."""
    return analysis.spatial if len(analysis.spatial) <= PER_SLOT_LIMIT else analysis.stages


def image_panels(
    analysis: Analysis, index: int, image: np.ndarray, box: Sequence[float] | None, title: str
) -> list[Panel]:
    def show_image(ax: Axes) -> None:
        ax.imshow(image)
        draw_box(ax, box)
        ax.set_title(title, fontsize=7)
        _plain(ax)

    panels: list[Panel] = [("image", show_image)]

    def overlay(name: str, value: torch.Tensor) -> Panel:
        def draw(ax: Axes) -> None:
            draw_overlay(ax, image, value, name)
            draw_box(ax, box)

        return name, draw

    if analysis.gradcam is not None:
        panels.append(overlay("Grad-CAM", analysis.gradcam[index]))
    for name, value in overlay_sources(analysis).items():
        panels.append(overlay(name, value[index]))
    for name, theta in analysis.thetas.items():
        def grid_panel(ax: Axes, theta: torch.Tensor = theta[index], name: str = name) -> None:
            ax.imshow(image)
            draw_sampling_grid(ax, theta, image.shape[:2])
            ax.set_title(f"{name}: STN grid", fontsize=7)
            _plain(ax)

        def warped_panel(ax: Axes, theta: torch.Tensor = theta[index], name: str = name) -> None:
            ax.imshow(warp(image, theta))
            ax.set_title(f"{name}: STN output", fontsize=7)
            _plain(ax)

        panels += [(f"{name} grid", grid_panel), (f"{name} warped", warped_panel)]
    return panels


def image_figure(
    analysis: Analysis, index: int, image: np.ndarray, *, box: Sequence[float] | None = None, title: str = ""
) -> Figure:
    """One image: itself, Grad-CAM, each attention map overlaid, STN grid and output, channel-weight strips."""
    panels = image_panels(analysis, index, image, box, title)
    strips = list(analysis.channels.items())[:MAX_STRIPS]
    cols = min(COLUMNS, len(panels))
    rows = -(-len(panels) // cols)
    panel_height, strip_height = 2.3 * rows, (0.25 * len(strips) + 0.3 if strips else 0.0)
    fig = Figure(figsize=(2.1 * cols, panel_height + strip_height))
    split = strip_height / (panel_height + strip_height)  # figure fraction below the panels
    grid = fig.add_gridspec(rows, cols, hspace=0.45, left=0.03, right=0.98, top=0.94, bottom=split + 0.02)
    for i, (_, draw) in enumerate(panels):
        draw(fig.add_subplot(grid[i // cols, i % cols]))
    if strips:
        strip_grid = fig.add_gridspec(len(strips), 1, hspace=0.6, left=0.25, right=0.98, top=split - 0.01,
                                      bottom=0.02)
        for j, (name, weights) in enumerate(strips):
            draw_strip(fig.add_subplot(strip_grid[j, 0]), weights[index], f"{name} ({weights.shape[1]} ch)")
    return fig


def index_figure(
    analysis: Analysis, images: np.ndarray, *, boxes: np.ndarray | None = None, titles: Sequence[str] = ()
) -> Figure:
    """A grid summarising a run: one row per image; image, Grad-CAM, each stage's average map, STN outputs."""
    columns: list[tuple[str, Callable[[Axes, int], None]]] = [
        ("image", lambda ax, i: (ax.imshow(images[i]), draw_box(ax, None if boxes is None else boxes[i])))
    ]
    if analysis.gradcam is not None:
        columns.append(("Grad-CAM", lambda ax, i: draw_overlay(ax, images[i], analysis.gradcam[i], "Grad-CAM")))
    for stage, value in analysis.stages.items():
        columns.append((stage, lambda ax, i, v=value, s=stage: draw_overlay(ax, images[i], v[i], s)))
    for name, theta in analysis.thetas.items():
        columns.append((f"{name} STN", lambda ax, i, t=theta: ax.imshow(warp(images[i], t[i]))))
    n = len(images)
    fig = Figure(figsize=(1.7 * len(columns), 1.8 * n + 0.3))
    grid = fig.add_gridspec(n, len(columns), hspace=0.5, wspace=0.1, left=0.02, right=0.98, top=0.95, bottom=0.02)
    for i in range(n):
        for j, (name, draw) in enumerate(columns):
            ax = fig.add_subplot(grid[i, j])
            draw(ax, i)
            _plain(ax)
            if j == 0:
                ax.set_title(titles[i] if i < len(titles) else "", fontsize=7)
            elif name.endswith("STN"):
                ax.set_title(name, fontsize=7)
    return fig


def write_figures(
    model: nn.Module,
    images: np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    out_dir: str | Path,
    pattern: str | None = None,
    boxes: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    dpi: int = 100,
) -> list[Path]:
    """Write ``index.png`` and ``image_XX.png`` per uint8 (n, H, W, 3) image to ``out_dir``; returns their paths.

    ``mean``/``std`` normalise the images as the model was trained; ``pattern`` is a glob over captured keys.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (n, H, W, 3), got {images.dtype} {images.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyse(model, to_inputs(images, mean=mean, std=std), pattern=pattern)
    titles = [caption(analysis, i, None if labels is None else int(labels[i]), class_names) for i in range(len(images))]
    paths = [out / "index.png"]
    write_figure(index_figure(analysis, images, boxes=boxes, titles=titles), paths[0], dpi=dpi)
    for i, image in enumerate(images):
        path = out / f"image_{i:02d}.png"
        box = None if boxes is None else boxes[i]
        write_figure(image_figure(analysis, i, image, box=box, title=titles[i]), path, dpi=dpi)
        paths.append(path)
    return paths

