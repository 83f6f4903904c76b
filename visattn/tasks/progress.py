"""What a run prints while it trains: in a log (no TTY), a progress line every N steps or every 30 s between the
epoch lines (``EpochSummary``); on a TTY, a progress bar whose columns are the epoch line's, MFU included."""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from visattn.tasks.common import EpochSummary, ThroughputMonitor, format_duration, metric_label


def step_loss(outputs: Any) -> float | None:
    """The training step's loss from what Lightning hands ``on_train_batch_end`` (a tensor or ``{"loss": ...}``)."""
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    try:
        return float(loss)
    except (TypeError, ValueError):
        return None


class ProgressLines(L.Callback):
    """Within an epoch, one line every ``every_steps`` training steps (None: off) or every ``every_seconds``
    seconds, whichever comes first: ``epoch 1/15  step 120/469  train loss 1.2345  85.2 img/s  ETA epoch 3m05s``.
    Nothing for the epoch's last step: the epoch line follows it."""

    def __init__(self, *, every_seconds: float = 30.0, every_steps: int | None = None) -> None:
        self.every_seconds = every_seconds
        self.every_steps = every_steps
        self.epoch_start = self.last = 0.0
        self.images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.epoch_start = self.last = time.perf_counter()
        self.images = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self.images += len(batch[0])
        now, step = time.perf_counter(), batch_idx + 1
        total = trainer.num_training_batches
        by_steps = self.every_steps is not None and step % self.every_steps == 0
        if not (by_steps or now - self.last >= self.every_seconds) or step >= total or not trainer.is_global_zero:
            return
        self.last = now
        elapsed = max(now - self.epoch_start, 1e-9)
        loss = step_loss(outputs)
        epochs = len(str(trainer.max_epochs or 0))
        steps = len(str(total)) if isinstance(total, int) else 1
        left = format_duration(elapsed / step * (total - step)) if isinstance(total, int) else "-"
        print(f"epoch {trainer.current_epoch + 1:>{epochs}}/{trainer.max_epochs}  step {step:>{steps}}/{total}  "
              f"train loss {'-' if loss is None else format(loss, '7.4f'):>7}  {self.images / elapsed:7.1f} img/s  "
              f"ETA epoch {left:>7}", flush=True)


class EpochBar(TQDMProgressBar):
    """Lightning's tqdm bar with the epoch line's columns (train loss, validation metric, img/s, share of the
    matmul peak) instead of Lightning's own (``v_num``, raw metric keys); the epoch line itself is printed above the
    bar at the end of each epoch (``EpochSummary``), so a TTY shows what a log shows."""

    def __init__(self, throughput: ThroughputMonitor, *, monitor: str) -> None:
        super().__init__(leave=True)
        self.throughput = throughput
        self.monitor = monitor
        self.summary = EpochSummary(throughput, monitor=monitor)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = trainer.callback_metrics
        shown: dict[str, Any] = {}
        for key, label in (("train/loss_step", "train loss"), (self.monitor, metric_label(self.monitor))):
            if key in metrics:
                shown[label] = f"{float(metrics[key]):.4f}"
        stats = self.throughput.history[-1] if self.throughput.history else {}
        if "throughput_img_s" in stats:
            shown["img/s"] = f"{stats['throughput_img_s']:.1f}"
        if "matmul_peak_share" in stats:
            shown["of mm peak"] = f"{100 * stats['matmul_peak_share']:.1f}%"
        return shown

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.summary.on_train_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        text = self.summary.line(trainer)  # every rank: reading the metrics may reduce across ranks
        if trainer.is_global_zero:
            bar = self.train_progress_bar
            (bar.write if bar is not None else print)(text, file=sys.stdout)
