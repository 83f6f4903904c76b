"""Evaluate a run's weights (best, last, or an export folder) on a data set split: ``visattn evaluate``.

The metrics are the training's own: the run's LightningModule (``ClassificationModule`` or
``DetectionModule``) is rebuilt around the loaded weights and run by ``Trainer.test`` on the split's
loader, whose images go through the run's eval transform. Classification adds the confusion matrix
(torchmetrics, rows = true class), detection the per-class AP (``MeanAveragePrecision(class_metrics=True)``).
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix
from torchmetrics.detection import MeanAveragePrecision

from visattn.errors import ConfigError, DataError
from visattn.export import load, load_run, read_run_files
from visattn.extras import require
from visattn.perf import resolve_precision
from visattn.rundir import read_run_config, write_figure, write_json_atomic
from visattn.tasks.common import quiet_lightning
from visattn.tasks.factory import build_datamodule, build_module

SPLITS = ("test", "val")


class KeepingMeanAP(MeanAveragePrecision):
    """``MeanAveragePrecision`` that keeps its last result (``DetectionModule`` resets it after logging)."""

    last: dict[str, torch.Tensor] | None = None

    def compute(self) -> dict[str, torch.Tensor]:
        self.last = super().compute()
        return self.last


class ConfusionCallback(L.Callback):
    """Confusion matrix of a test loop from the logits the model already computes (a forward hook; no second pass)."""

    def __init__(self, num_classes: int) -> None:
        self.matrix = MulticlassConfusionMatrix(num_classes)
        self.logits: torch.Tensor | None = None
        self.handle: Any = None

    def keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.logits = output.detach()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.handle = pl_module.model.register_forward_hook(self.keep)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.matrix.update(self.logits.float().cpu(), batch[1].cpu())  # (B, classes), (B,)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.handle.remove()


def load_weights(run_dir: Path, *, checkpoint: str, export: str | Path | None) -> tuple[nn.Module, Any, str]:
    """(eval-mode model, its ``ModelSpec``, a label): a run checkpoint read with ``weights_only=True``
    (``visattn.models.read_state_dict``), or an export folder's model.json + model.safetensors."""
    if export is None:
        model, spec = load_run(run_dir, checkpoint=checkpoint)
        return model, spec, f"checkpoint {checkpoint}"
    folder = Path(export)
    if not (folder / "model.json").exists():
        raise FileNotFoundError(f"--export {folder}: not an export folder (no model.json); exports are made by "
                                "visattn export")
    model = load(folder)
    return model, model.spec, f"export {folder}"


def check_export_fits_run(spec: Any, config: Any, run_dir: Path, export: str | Path) -> None:
    """An export evaluated with a run must be of the run's task and (when the run recorded it) class count."""
    _, metrics = read_run_files(run_dir)
    classes = metrics.get("num_classes")
    mismatch = []
    if spec.task != config.task:
        mismatch.append(f"task {spec.task!r} vs the run's {config.task!r}")
    if isinstance(classes, int) and classes != spec.num_classes:
        mismatch.append(f"{spec.num_classes} classes vs the run's {classes}")
    if mismatch:
        raise ConfigError(f"--export {export} does not belong to run {run_dir}: {'; '.join(mismatch)} (it holds a "
                         f"{spec.task} {spec.backbone} model); evaluate an export of this run, or evaluate the run's "
                         "own checkpoint without --export")


def confusion_figure(matrix: list[list[int]], class_names: list[str], path: Path, title: str) -> Path | None:
    """A PNG of the confusion matrix (matplotlib: ``MissingExtraError`` naming the extra without it)."""
    require("matplotlib", purpose="the confusion-matrix PNG").use("Agg")
    import matplotlib.pyplot as plt

    n = len(matrix)
    side = min(12.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(side, side))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(class_names, rotation=90 if n > 6 else 0)
    ax.set_yticklabels(class_names)
    if n <= 20:
        peak = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                ax.text(j, i, str(value), ha="center", va="center", fontsize=8,
                        color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    write_figure(fig, path, dpi=100)
    plt.close(fig)
    return path


def evaluate_run(
    run_dir: str | Path,
    *,
    checkpoint: str = "best",
    export: str | Path | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    batch_size: int | None = None,
    limit: int | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Evaluate and write ``<run>/eval-<data>-<split>.json``; returns its content plus ``path`` (and ``figure``).

    ``data`` other than the run's starts from that data set's defaults (``data_dir`` and options are not
    carried over); it must have the run's number of classes.
    """
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} cannot be evaluated; valid splits: {', '.join(SPLITS)}")
    for name, value in (("batch_size", batch_size), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    model, spec, weights = load_weights(run_dir, checkpoint=checkpoint, export=export)
    if export is not None:
        check_export_fits_run(spec, config, run_dir, export)
    same_data = data is None or data == config.data
    config = dataclasses.replace(
        config, data=config.data if same_data else data, img_size=spec.img_size,
        data_dir=data_dir if data_dir is not None else (config.data_dir if same_data else None),
        data_args=config.data_args if same_data else {},
        # classification: the normalisation recorded with the weights (detection normalises in its collate)
        augment=config.augment if spec.task == "detect" else {**(config.augment or {}), "mean": spec.mean,
                                                              "std": spec.std},
        batch_size=batch_size or config.batch_size, limit=limit if limit is not None else config.limit,
        num_workers=num_workers)
    quiet_lightning()
    datamodule = build_datamodule(config)
    if datamodule.num_classes != spec.num_classes:
        raise DataError(f"data set {config.data!r} has {datamodule.num_classes} classes but the model predicts "
                         f"{spec.num_classes}; evaluate on a data set with the run's classes")
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    callbacks: list[L.Callback] = []
    module = build_module(config, model, num_classes=spec.num_classes, in_chans=spec.in_chans, evaluation=True)
    if spec.task == "detect":
        from visattn.tasks.detect import coco_backend

        module.test_map = KeepingMeanAP(box_format="xyxy", iou_type="bbox", backend=coco_backend(),
                                        class_metrics=True)
    else:
        confusion = ConfusionCallback(spec.num_classes)
        callbacks.append(confusion)

    precision, _ = resolve_precision(config.precision, accelerator=config.accelerator)  # "auto": as training chose
    trainer = L.Trainer(accelerator=config.accelerator, devices=1, logger=False, callbacks=callbacks,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        precision=precision)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        results = trainer.test(module, dataloaders=loader, verbose=False)
    metrics = {key.split("/", 1)[1]: float(value) for key, value in (results[0] if results else {}).items()}
    names = list(spec.class_names or datamodule.class_names)
    out: dict[str, Any] = {
        "run": str(run_dir), "weights": weights, "task": spec.task, "data": config.data, "data_dir": config.data_dir,
        "split": split, "images": len(loader.dataset), "img_size": spec.img_size, "metrics": metrics,
        "class_names": names,
    }
    stem = f"{config.data}-{split}"
    figure = None
    if spec.task == "detect":
        result = module.test_map.last or {}
        classes = [int(c) for c in result.get("classes", torch.zeros(0)).reshape(-1).tolist()]
        ap = result.get("map_per_class", torch.zeros(0)).reshape(-1).tolist()
        recall = result.get("mar_100_per_class", torch.zeros(0)).reshape(-1).tolist()
        out["per_class"] = {names[c] if c < len(names) else str(c): {"map": a, "mar100": r}
                            for c, a, r in zip(classes, ap, recall, strict=True)}  # map: AP at IoU .50:.95
    else:
        matrix = confusion.matrix.compute().tolist()
        out["confusion_matrix"] = {"rows": "true class", "columns": "predicted class", "counts": matrix}
        from visattn.extras import MissingExtraError

        try:
            figure = confusion_figure(matrix, names, run_dir / f"confusion-{stem}.png",
                                      f"{config.data} {split}: {weights} (acc {metrics.get('acc', float('nan')):.3f})")
        except MissingExtraError as err:  # the metrics are still worth writing: say why there is no PNG
            out["figure_skipped"] = str(err)
    path = run_dir / f"eval-{stem}.json"
    write_json_atomic(path, out)
    out["path"] = str(path)
    if figure is not None:
        out["figure"] = str(figure)
    return out
