"""What a finished run leaves for a person to look at, written by ``train`` at the end of every run.

- ``results.png``: training loss and validation metric per epoch (from ``logs/metrics.csv``);
- classification: ``confusion_matrix.png`` and ``per_class.csv`` (precision, recall, F1, support);
- detection: ``pr_curve.png`` (IoU 0.5), ``per_class.csv`` (AP50-95, AP50, recall, instances) and
  ``val_predictions.png`` (predicted and true boxes on validation images).

The numbers come from the test loop ``train`` already runs (``ResultsCollector`` watches it: no second pass) and
from torchmetrics. matplotlib is optional (``visattn[viz]``): without it the tables are still written and one line
says the pictures were skipped.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from visattn.rundir import write_atomic

RESULTS_PNG = "results.png"
CONFUSION_PNG = "confusion_matrix.png"
PER_CLASS_CSV = "per_class.csv"
PR_CURVE_PNG = "pr_curve.png"
PREDICTIONS_PNG = "val_predictions.png"
SIZE_KEYS = ("map_small", "map_medium", "map_large")  # torchmetrics gives -1 where the split has no such objects
GRID_IMAGES = 8  # validation images in val_predictions.png
PRINTED_CLASSES = 20  # more classes than this: the printed table shows the weakest ones (the CSV holds all)
NO_MATPLOTLIB = ("visattn: pictures skipped (results.png and the others): matplotlib is not installed; "
                 "pip install 'visattn[viz]' to get them")


def format_test_metrics(test: Mapping[str, float | None]) -> str:
    """The end-of-run ``test:`` line; ``map_small/medium/large`` only where the split has such objects (-1)."""
    shown = [f"{key}={value:.4f}" if isinstance(value, (int, float)) else f"{key}={value}"
             for key, value in test.items()
             if not (key in SIZE_KEYS and isinstance(value, (int, float)) and value < 0)]
    return ", ".join(shown)


class _KeepingMeanAP:
    """Builds ``MeanAveragePrecision`` with per-class results and the precision array, keeping its last result
    and the number of true boxes per class (``DetectionModule`` resets the metric after logging)."""

    @staticmethod
    def make(backend: str) -> Any:
        from torchmetrics.detection import MeanAveragePrecision

        class Keeping(MeanAveragePrecision):
            last: dict[str, Any] | None = None
            instances: torch.Tensor | None = None

            def compute(self) -> dict[str, Any]:
                labels = [t.reshape(-1).long().cpu() for t in self.groundtruth_labels]
                self.instances = torch.cat(labels).bincount() if labels else torch.zeros(0, dtype=torch.long)
                self.last = super().compute()
                return self.last

        return Keeping(box_format="xyxy", iou_type="bbox", backend=backend, class_metrics=True,
                       extended_summary=True)


class ResultsCollector(L.Callback):
    """Gathers per-class results while ``trainer.test`` runs: classification logits through a forward hook
    into torchmetrics (confusion matrix, precision, recall, F1 per class); detection by giving the task module a
    ``MeanAveragePrecision`` with per-class results. Nothing runs during fit or validation."""

    def __init__(self, *, task: str) -> None:
        self.task = task
        self.metrics: dict[str, Any] = {}
        self.computed: dict[str, torch.Tensor] = {}  # on every rank at the end of the test loop (a collective)
        self.detection: Any = None
        self._logits: torch.Tensor | None = None
        self._handle: Any = None

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._logits = output.detach()

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.task == "detect":
            from visattn.tasks.detect import coco_backend

            self.detection = _KeepingMeanAP.make(coco_backend()).to(pl_module.device)
            pl_module.test_map = self.detection
            return
        from torchmetrics.classification import (
            MulticlassConfusionMatrix,
            MulticlassF1Score,
            MulticlassPrecision,
            MulticlassRecall,
        )

        n = int(trainer.datamodule.num_classes)
        self.metrics = {"confusion": MulticlassConfusionMatrix(n), "precision": MulticlassPrecision(n, average=None),
                        "recall": MulticlassRecall(n, average=None), "f1": MulticlassF1Score(n, average=None)}
        self.metrics = {key: metric.to(pl_module.device) for key, metric in self.metrics.items()}
        self.computed = {}
        self._handle = pl_module.model.register_forward_hook(self._keep)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.task == "detect" or self._logits is None:
            return
        logits, target = self._logits.float(), batch[1]  # (B, classes), (B,)
        for metric in self.metrics.values():
            metric.update(logits, target)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.metrics:  # every rank: under DDP, compute gathers the other ranks' counts
            self.computed = {key: metric.compute().cpu() for key, metric in self.metrics.items()}


@dataclass
class RunResults:
    """The files written to the run and the lines ``train`` prints at its end."""

    files: list[Path] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------- tables
def classification_table(collector: ResultsCollector, names: Sequence[str]) -> tuple[list[dict[str, Any]], list]:
    """Per-class rows (precision, recall, F1, support) and the confusion matrix (rows: true class)."""
    matrix = collector.computed["confusion"].long()
    values = {key: collector.computed[key].tolist() for key in ("precision", "recall", "f1")}
    support = matrix.sum(1).tolist()
    rows = [{"class": name_of(c, names), "precision": values["precision"][c], "recall": values["recall"][c],
             "f1": values["f1"][c], "support": int(support[c])} for c in range(matrix.shape[0])]
    return rows, matrix.tolist()


def detection_table(metric: Any, names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-class rows (AP50-95, AP50, recall at 100 detections, true boxes) from the kept mAP result."""
    result = metric.last or {}
    classes = [int(c) for c in torch.as_tensor(result.get("classes", [])).reshape(-1).tolist()]
    ap = torch.as_tensor(result.get("map_per_class", [])).reshape(-1).tolist()
    recall = torch.as_tensor(result.get("mar_100_per_class", [])).reshape(-1).tolist()
    precision = result.get("precision")  # (IoU thresholds, recall points, classes, areas, max dets)
    instances = metric.instances.tolist() if metric.instances is not None else []
    rows = []
    for k, c in enumerate(classes):
        ap50 = float("nan")
        if isinstance(precision, torch.Tensor) and precision.ndim == 5 and k < precision.shape[2]:
            curve = precision[0, :, k, 0, -1]
            valid = curve[curve > -1]
            ap50 = float(valid.mean()) if len(valid) else float("nan")
        rows.append({"class": name_of(c, names), "ap50_95": ap[k] if k < len(ap) else float("nan"), "ap50": ap50,
                     "recall": recall[k] if k < len(recall) else float("nan"),
                     "instances": int(instances[c]) if c < len(instances) else 0})
    return rows


def name_of(index: int, names: Sequence[str]) -> str:
    return str(names[index]) if index < len(names) else str(index)


def table_text(rows: list[dict[str, Any]], *, title: str) -> list[str]:
    """An aligned text table; with many classes, the weakest ``PRINTED_CLASSES`` by the second column."""
    if not rows:
        return []
    keys = list(rows[0])
    shown = rows
    if len(rows) > PRINTED_CLASSES:
        shown = sorted(rows, key=lambda r: _sortable(r[keys[1]]))[:PRINTED_CLASSES]
        title += f" (the {PRINTED_CLASSES} weakest of {len(rows)} classes; all in {PER_CLASS_CSV})"
    width = max(len(str(r["class"])) for r in shown + [{"class": "class"}])

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "   -  " if math.isnan(value) or value < 0 else f"{value:6.3f}"
        return f"{value:>6}"

    lines = [title, f"{'class':<{width}}  " + "  ".join(f"{k:>7}" for k in keys[1:])]
    for row in shown:
        lines.append(f"{str(row['class']):<{width}}  " + "  ".join(f"{cell(row[k]):>7}" for k in keys[1:]))
    return lines


def _sortable(value: Any) -> float:
    return float("inf") if not isinstance(value, (int, float)) or math.isnan(value) else float(value)


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def epoch_history(metrics_csv: Path) -> dict[str, dict[int, float]]:
    """Per-epoch values of every column of Lightning's ``logs/metrics.csv``: {column: {epoch: value}} (the last
    value logged in an epoch wins; step-level columns are left out)."""
    history: dict[str, dict[int, float]] = {}
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            epoch = row.get("epoch", "")
            if not epoch:
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or key.endswith("_step") or not value:
                    continue
                try:
                    history.setdefault(key, {})[int(float(epoch))] = float(value)
                except ValueError:
                    continue
    return history


# ---------------------------------------------------------------------------------------------------- writing
def write_run_results(*, trainer: L.Trainer, module: L.LightningModule, datamodule: Any, run_dir: Path,
                      task: str, monitor: str) -> RunResults:
    """Write the run's pictures and per-class table (see the module docstring); returns what was written and the
    lines to print. Call on global rank 0 after ``trainer.test``."""
    out = RunResults()
    names = list(getattr(datamodule, "class_names", []) or [])
    collector = next((c for c in trainer.callbacks if isinstance(c, ResultsCollector)), None)
    split = "val" if getattr(datamodule, "test_is_val", False) else "test"
    rows: list[dict[str, Any]] = []
    matrix: list[list[int]] | None = None
    if collector is not None and task == "detect" and collector.detection is not None:
        rows = detection_table(collector.detection, names)
    elif collector is not None and collector.computed:
        rows, matrix = classification_table(collector, names)
    if rows:
        write_csv(run_dir / PER_CLASS_CSV, rows)
        out.files.append(run_dir / PER_CLASS_CSV)
        out.lines += table_text(rows, title=f"per class ({split} split, best checkpoint):")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        out.lines.append(NO_MATPLOTLIB)
        return out
    from visattn.viz import run_figures  # imports matplotlib (optional)

    logs = run_dir / "logs"  # a resumed run's earlier parts first (train keeps them as metrics.partN.csv)
    history: dict[str, dict[int, float]] = {}
    for part in sorted(logs.glob("metrics.part*.csv")) + [logs / "metrics.csv"]:
        if part.is_file():
            for key, values in epoch_history(part).items():
                history.setdefault(key, {}).update(values)
    if history:
        out.files.append(run_figures.results_figure(history, run_dir / RESULTS_PNG, monitor=monitor))
    if matrix is not None:
        out.files.append(run_figures.confusion_figure(matrix, names, run_dir / CONFUSION_PNG, title=f"{split} split"))
    if task == "detect" and collector is not None and collector.detection is not None:
        result = collector.detection.last or {}
        if isinstance(result.get("precision"), torch.Tensor):
            out.files.append(run_figures.pr_figure(result, names, run_dir / PR_CURVE_PNG))
        out.files.append(run_figures.predictions_figure(module, datamodule, run_dir / PREDICTIONS_PNG,
                                                        n=GRID_IMAGES))
    out.lines.append(f"pictures: {', '.join(p.name for p in out.files if p.suffix == '.png')} in {run_dir}")
    return out

