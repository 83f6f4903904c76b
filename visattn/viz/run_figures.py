"""The pictures a finished run leaves (``visattn.results``): curves, confusion matrix, PR curve, val predictions.

Drawn on ``matplotlib.figure.Figure`` (no pyplot) and written atomically with ``visattn.rundir.write_figure``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from visattn.data.base import IMAGENET_MEAN, IMAGENET_STD
from visattn.models.detector import postprocess
from visattn.rundir import write_figure

METRIC_NAMES = {"val/acc": "val accuracy", "val/map": "val mAP50-95", "val/map50": "val mAP50"}


def results_figure(history: Mapping[str, Mapping[int, float]], path: Path, *, monitor: str) -> Path:
    """Training (and validation) loss per epoch on the left, the validation metric(s) on the right."""
    fig = Figure(figsize=(9, 3.4))
    loss_ax, metric_ax = fig.subplots(1, 2)
    for key, label, style in (("train/loss_epoch", "train loss", "-o"), ("val/loss", "val loss", "--s")):
        values = history.get(key) or {}
        if values:
            epochs = sorted(values)
            loss_ax.plot([e + 1 for e in epochs], [values[e] for e in epochs], style, label=label, markersize=4)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss per epoch")
    keys = [monitor] + [k for k in ("val/map50",) if k != monitor and k in history]
    for key in keys:
        values = history.get(key) or {}
        if values:
            epochs = sorted(values)
            metric_ax.plot([e + 1 for e in epochs], [values[e] for e in epochs], "-o", markersize=4,
                           label=METRIC_NAMES.get(key, key))
    metric_ax.set(xlabel="epoch", title="validation metric", ylim=(0, 1.02))
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    write_figure(fig, path, dpi=100)
    return path


def confusion_figure(matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path, *, title: str) -> Path:
    """Counts, rows = true class, with a colour bar; numbers written in the cells up to 20 classes."""
    counts = np.asarray(matrix)
    n = counts.shape[0]
    side = min(12.0, 3.0 + 0.45 * n)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    image = ax.imshow(counts, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="images")
    labels = [str(names[c]) if c < len(names) else str(c) for c in range(n)]
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=f"confusion matrix, {title}")
    ax.set_xticklabels(labels, rotation=90 if n > 6 else 0, fontsize=8)
    ax.set_yticklabels(labels, fontsize=8)
    if n <= 20:
        peak = counts.max() or 1
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if counts[i, j] > peak / 2 else "black")
    fig.tight_layout()
    write_figure(fig, path, dpi=100)
    return path


def pr_figure(result: Mapping[str, Any], names: Sequence[str], path: Path) -> Path:
    """Precision over recall at IoU 0.5 per class (all areas, 100 detections), from torchmetrics' extended
    summary; the legend gives each class's AP50."""
    precision = result["precision"]  # (IoU thresholds, 101 recall points, classes, areas, max dets), -1: undefined
    classes = [int(c) for c in torch.as_tensor(result.get("classes", [])).reshape(-1).tolist()]
    recall = np.linspace(0, 1, precision.shape[1])
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    curves = []
    for k, c in enumerate(classes[:precision.shape[2]]):
        curve = precision[0, :, k, 0, -1].float().numpy()
        if (curve > -1).any():
            curve = np.where(curve > -1, curve, np.nan)
            curves.append(curve)
            name = str(names[c]) if c < len(names) else str(c)
            ax.plot(recall, curve, linewidth=1, label=f"{name} {np.nanmean(curve):.3f}")
    if curves:
        mean = np.nanmean(np.stack(curves), axis=0)
        ax.plot(recall, mean, color="black", linewidth=2.5, label=f"all classes {np.nanmean(mean):.3f} mAP50")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="precision-recall, IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    write_figure(fig, path, dpi=100)
    return path


def predictions_figure(module: Any, datamodule: Any, path: Path, *, n: int) -> Path:
    """The model's boxes (score >= 0.25, coloured by class, with name and score) and the true boxes (white,
    dashed) on the first ``n`` validation images."""
    samples = datamodule.raw_samples("val", n)
    model = module.eval_model() if hasattr(module, "eval_model") else module.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs = prediction_inputs(samples.images).to(next(model.parameters()).device)
            found = postprocess(model.decode(model.forward_raw(inputs)), conf_threshold=0.25)
    finally:
        model.train(was_training)
    count = len(samples.images)
    cols = min(4, count)
    rows = -(-count // cols)
    fig = Figure(figsize=(2.6 * cols, 2.7 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    colours = [f"C{i}" for i in range(10)]
    names = samples.class_names
    for i, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= count:
            ax.axis("off")
            continue
        ax.imshow(samples.images[i])
        for x0, y0, x1, y1 in samples.boxes[i].tolist():
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linestyle="--",
                                   linewidth=1))
        det = found[i]
        for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist(),
                                     strict=True):
            x0, y0, x1, y1 = box
            colour = colours[int(label) % len(colours)]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))
            name = names[int(label)] if int(label) < len(names) else str(label)
            ax.text(x0, y0, f"{name} {score:.2f}", fontsize=6, color="white", va="bottom",
                    bbox=dict(facecolor=colour, edgecolor="none", pad=0.5, alpha=0.8))
        ax.set_title(f"val {samples.image_ids[i]}: {len(det['boxes'])} found, {len(samples.boxes[i])} true",
                     fontsize=7)
    fig.suptitle("predictions (score >= 0.25, coloured) and true boxes (white, dashed)", fontsize=9)
    fig.tight_layout()
    write_figure(fig, path, dpi=100)
    return path


def prediction_inputs(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, S, S, 3) letterboxed images -> (n, 3, S, S) normalised as detection's collate does."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().permute(0, 3, 1, 2)  # (n, 3, S, S)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return (x - mean) / std
