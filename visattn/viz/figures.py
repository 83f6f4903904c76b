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
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from visattn.errors import BadValueError
from visattn.rundir import write_figure
from visattn.viz.capture import AttentionMaps, capture
from visattn.viz.gradcam import eval_mode, grad_cam
from visattn.viz.measure import channel_maps, check_pattern, model_stages, spatial_maps, stage_maps
from visattn.viz.scales import Scale, constant_value, density_ratio, layer_scale

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

    def is_density(self, key: str) -> bool:
        """An STN's sample density (its own map, or a stage holding only it)."""
        return key in self.thetas

    def shown(self, key: str, value: torch.Tensor) -> torch.Tensor:
        """The values drawn for a map: STN densities relative to uniform sampling, others as they are."""
        return density_ratio(value) if self.is_density(key) else value

    def scales(self, sources: dict[str, torch.Tensor]) -> dict[str, Scale]:
        """One colour scale per map key over all images (``sources``: key -> (B, h, w)), Grad-CAM included."""
        out = {key: layer_scale(self.shown(key, value), name=key, density=self.is_density(key))
               for key, value in sources.items()}
        if self.gradcam is not None:
            out["Grad-CAM"] = layer_scale(self.gradcam, name="Grad-CAM", unit_range=True)
        return out


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
        check_pattern(pattern, maps)  # a glob that matches nothing is an error, not an empty figure
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
                    thetas=thetas, gradcam=cam,
                    logits=logits.detach().cpu() if isinstance(logits, torch.Tensor) else torch.zeros(0))


def warp(image: np.ndarray, theta: torch.Tensor) -> np.ndarray:
    """What an STN with ``theta`` (2, 3) makes of the uint8 (H, W, 3) image."""
    x = torch.from_numpy(np.ascontiguousarray(image)).float().permute(2, 0, 1)[None]  # (1, 3, H, W)
    grid = F.affine_grid(theta[None].float(), list(x.shape), align_corners=False)  # (1, H, W, 2)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0].permute(1, 2, 0).clamp(0, 255).byte().numpy()  # (H, W, 3)


def _upsampled(value: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map -> (H, W) bilinear, values unchanged in range."""
    return F.interpolate(value[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _plain(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def draw_overlay(ax: Axes, image: np.ndarray, value: torch.Tensor, title: str, scale: Scale) -> None:
    """``value`` over the grey image on its layer's ``scale``; a constant map as a grey wash, labelled so."""
    ax.imshow(image.mean(-1), cmap="gray", vmin=0, vmax=255)
    flat = constant_value(value)
    ax.set_gid(f"overlay:{scale.name or scale.label}")
    if flat is not None:
        ax.imshow(np.full(image.shape[:2], 0.5), cmap="gray", vmin=0.0, vmax=1.0, alpha=0.6)
        ax.set_title(f"{title}\nconstant ({flat:.3g})", fontsize=7)
    else:
        ax.imshow(_upsampled(value, image.shape[:2]), cmap=scale.cmap, alpha=0.55, vmin=scale.vmin,
                  vmax=scale.vmax)
        ax.set_title(f"{title}\n[{float(value.min()):.3g}, {float(value.max()):.3g}]", fontsize=7)
    _plain(ax)


def colour_bar(fig: Figure, scale: Scale, *, ax: Axes | None = None, cax: Axes | None = None) -> None:
    """A colour bar for ``scale``, labelled with its range."""
    mappable = ScalarMappable(norm=Normalize(scale.vmin, scale.vmax), cmap=scale.cmap)
    bar = fig.colorbar(mappable, ax=ax, cax=cax, fraction=0.046, pad=0.03)
    bar.ax.tick_params(labelsize=6)
    bar.ax.set_gid(f"colorbar:{scale.name or scale.label}")
    bar.set_label(f"{scale.label} {scale.text}", fontsize=6)


def draw_box(ax: Axes, box: Sequence[float] | np.ndarray | None) -> None:
    """One (4,) box or several (k, 4) boxes, (x0, y0, x1, y1) in pixels."""
    if box is None:
        return
    for x0, y0, x1, y1 in np.asarray(box, np.float32).reshape(-1, 4).tolist():
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


def caption(analysis: Analysis, index: int, label: int | np.ndarray | None,
            class_names: Sequence[str] | None) -> str:
    def name(c: int) -> str:
        return str(class_names[c]) if class_names and c < len(class_names) else str(c)

    pred = int(analysis.logits[index].argmax()) if analysis.logits.ndim == 2 else None
    if isinstance(label, np.ndarray):  # detection: the image's object labels
        parts = [f"{len(label)} object(s)" if len(label) > 3 else ", ".join(name(int(c)) for c in label)]
    else:
        parts = [] if label is None else [f"label {name(label)}"]
    if pred is not None:
        parts.append(f"pred {name(pred)}")
    return ", ".join(parts)


def overlay_sources(analysis: Analysis) -> dict[str, torch.Tensor]:
    """The maps drawn per image: every slot's when there are few, else the per-stage averages."""
    return analysis.spatial if len(analysis.spatial) <= PER_SLOT_LIMIT else analysis.stages


def image_panels(
    analysis: Analysis, index: int, image: np.ndarray, box: Sequence[float] | np.ndarray | None, title: str,
    scales: dict[str, Scale],
) -> list[Panel]:
    """The panels of one image; each overlay is drawn on its layer's scale (shared with the other images)."""
    def show_image(ax: Axes) -> None:
        ax.imshow(image)
        draw_box(ax, box)
        ax.set_title(title, fontsize=7)
        _plain(ax)

    panels: list[Panel] = [("image", show_image)]

    def overlay(name: str, value: torch.Tensor) -> Panel:
        def draw(ax: Axes) -> None:
            draw_overlay(ax, image, value, name, scales[name])
            draw_box(ax, box)
            if constant_value(value) is None:
                colour_bar(ax.figure, scales[name], ax=ax)

        return name, draw

    if analysis.gradcam is not None:
        panels.append(overlay("Grad-CAM", analysis.gradcam[index]))
    for name, value in overlay_sources(analysis).items():
        panels.append(overlay(name, analysis.shown(name, value[index])))
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


STRIP_CHAR_IN = 0.05  # width of one character of a strip's 6-point label, in inches


def image_figure(
    analysis: Analysis, index: int, image: np.ndarray, *, box: Sequence[float] | np.ndarray | None = None,
    title: str = "", scales: dict[str, Scale] | None = None,
) -> Figure:
    """One image: itself, Grad-CAM, each attention map overlaid, STN grid and output, channel-weight strips.

    ``scales`` (``Analysis.scales``) are the layers' colour scales over all images; by default this one's.
    """
    scales = scales if scales is not None else analysis.scales(overlay_sources(analysis))
    panels = image_panels(analysis, index, image, box, title, scales)
    strips = list(analysis.channels.items())[:MAX_STRIPS]
    cols = min(COLUMNS, len(panels))
    rows = -(-len(panels) // cols)
    panel_height, strip_height = 2.3 * rows, (0.25 * len(strips) + 0.3 if strips else 0.0)
    width = max(2.4 * cols, 7.0 if strips else 0.0)  # strips and their labels need room even beside one panel
    fig = Figure(figsize=(width, panel_height + strip_height))
    split = strip_height / (panel_height + strip_height)  # figure fraction below the panels
    grid = fig.add_gridspec(rows, cols, hspace=0.45, wspace=0.35, left=0.03, right=0.97, top=0.94,
                            bottom=split + 0.02)
    for i, (_, draw) in enumerate(panels):
        draw(fig.add_subplot(grid[i // cols, i % cols]))
    if strips:
        labels = [f"{name} ({weights.shape[1]} ch)" for name, weights in strips]
        left = min(0.6, (0.15 + STRIP_CHAR_IN * max(len(t) for t in labels)) / width)  # room for the longest label
        strip_grid = fig.add_gridspec(len(strips), 1, hspace=0.6, left=left, right=0.86, top=split - 0.01,
                                      bottom=0.02)
        for j, ((_, weights), label) in enumerate(zip(strips, labels, strict=True)):
            draw_strip(fig.add_subplot(strip_grid[j, 0]), weights[index], label)
        cax = fig.add_axes((0.88, 0.02, 0.012, max(split - 0.03, 0.01)))
        colour_bar(fig, Scale(0.0, 1.0, "viridis", "channel weight"), cax=cax)
    return fig


def index_figure(
    analysis: Analysis, images: np.ndarray, *, boxes: np.ndarray | Sequence[np.ndarray] | None = None,
    titles: Sequence[str] = (), scales: dict[str, Scale] | None = None,
) -> Figure:
    """A grid summarising a run: one column per image, one row per layer (image, Grad-CAM, each stage's
    average map, STN outputs), each row on one colour scale with its colour bar at the right."""
    sources = dict(analysis.stages)
    scales = scales if scales is not None else analysis.scales(sources)
    rows: list[tuple[str, Callable[[Axes, int], None], Scale | None]] = [
        ("image", lambda ax, i: (ax.imshow(images[i]), draw_box(ax, None if boxes is None else boxes[i])), None)
    ]
    if analysis.gradcam is not None:
        rows.append(("Grad-CAM", lambda ax, i: draw_overlay(ax, images[i], analysis.gradcam[i], "Grad-CAM",
                                                            scales["Grad-CAM"]), scales["Grad-CAM"]))
    for stage, value in sources.items():
        shown = analysis.shown(stage, value)
        rows.append((stage, lambda ax, i, v=shown, s=stage: draw_overlay(ax, images[i], v[i], s, scales[s]),
                     scales[stage]))
    for name, theta in analysis.thetas.items():
        rows.append((f"{name} STN output", lambda ax, i, t=theta: ax.imshow(warp(images[i], t[i])), None))
    n = len(images)
    fig = Figure(figsize=(1.7 * n + 1.4, 1.9 * len(rows) + 0.3))
    right = 1.0 - 1.2 / (1.7 * n + 1.4)  # room for the colour bars
    grid = fig.add_gridspec(len(rows), n, hspace=0.55, wspace=0.1, left=0.04, right=right, top=0.95, bottom=0.02)
    for r, (name, draw, scale) in enumerate(rows):
        varying = False
        for i in range(n):
            ax = fig.add_subplot(grid[r, i])
            draw(ax, i)
            _plain(ax)
            if r == 0:
                ax.set_title(titles[i] if i < len(titles) else "", fontsize=7)
            if i == 0:
                ax.set_ylabel(name, fontsize=7)
            if scale is not None and constant_value(shown_value(analysis, name, i)) is None:
                varying = True
        if scale is not None and varying:
            box = fig.axes[-1].get_position()
            cax = fig.add_axes((box.x1 + 0.01, box.y0, 0.012, box.height))
            colour_bar(fig, scale, cax=cax)
    return fig


def shown_value(analysis: Analysis, name: str, index: int) -> torch.Tensor:
    """The map drawn in ``index_figure``'s row ``name`` for image ``index``."""
    if name == "Grad-CAM" and analysis.gradcam is not None:
        return analysis.gradcam[index]
    return analysis.shown(name, analysis.stages[name][index])


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
        raise BadValueError(f"images must be uint8 (n, H, W, 3), got {images.dtype} {images.shape}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    analysis = analyse(model, to_inputs(images, mean=mean, std=std), pattern=pattern)

    def label_of(i: int) -> int | np.ndarray | None:
        if labels is None:
            return None
        return labels[i] if isinstance(labels[i], np.ndarray) and labels[i].ndim else int(labels[i])

    titles = [caption(analysis, i, label_of(i), class_names) for i in range(len(images))]
    paths = [out / "index.png"]
    write_figure(index_figure(analysis, images, boxes=boxes, titles=titles), paths[0], dpi=dpi)
    scales = analysis.scales(overlay_sources(analysis))  # per layer over all images: panels compare by colour
    for i, image in enumerate(images):
        path = out / f"image_{i:02d}.png"
        box = None if boxes is None else boxes[i]
        write_figure(image_figure(analysis, i, image, box=box, title=titles[i], scales=scales), path, dpi=dpi)
        paths.append(path)
    for stale in sorted(out.glob("image_*.png")):  # an earlier call's extra images would pass for this one's
        if stale not in paths and stale.is_file() and not stale.is_symlink():
            stale.unlink()
    return paths

