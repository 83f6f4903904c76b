"""Pieces shared by the task modules: optimiser + schedule, RNG state in checkpoints, throughput, atomic saves."""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn


def make_optimizer(
    model: nn.Module, *, name: str, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """AdamW or SGD; no weight decay on biases, norms and 1-d parameters (timm's convention)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


def warmup_cosine(total_steps: int, warmup_steps: int) -> Any:
    """LR factor: linear warm-up to 1, then cosine to 0 at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def configure_optimizers(module: L.LightningModule, hp: Any) -> dict[str, Any]:
    optimizer = make_optimizer(module.model, name=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay,
                               momentum=hp.momentum)
    total = max(1, int(module.trainer.estimated_stepping_batches))
    epochs = max(1, module.trainer.max_epochs or 1)
    warmup = min(total // 2, int(round(hp.warmup_epochs * total / epochs)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def rng_state() -> dict[str, Any]:
    """Global RNG states as plain types and tensors, so checkpoints stay loadable with ``weights_only=True``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNGs saved with a checkpoint, so a resumed run draws what the uninterrupted one drew."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename: a kill never leaves half a checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)


class ThroughputMonitor(L.Callback):
    """Logs training images/s per epoch and the fraction of step time spent waiting for the next batch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.images = 0
        self.wait = 0.0
        self.busy = 0.0
        self.epoch_start = time.perf_counter()
        self.last_end: float | None = None
        self.batch_start = 0.0
        self.history: list[dict[str, float]] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images, self.wait, self.busy = 0, 0.0, 0.0
        self.epoch_start = self.last_end = time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        now = time.perf_counter()
        if self.last_end is not None:
            self.wait += now - self.last_end
        self.batch_start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        now = time.perf_counter()
        self.busy += now - self.batch_start
        self.last_end = now
        self.images += len(batch[0])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self.epoch_start
        stats = {
            "throughput_img_s": self.images / max(elapsed, 1e-9),
            "data_wait_frac": self.wait / max(self.wait + self.busy, 1e-9),
        }
        self.history.append(stats)
        pl_module.log("train/throughput_img_s", stats["throughput_img_s"], sync_dist=True)
        pl_module.log("train/data_wait_frac", stats["data_wait_frac"], sync_dist=True)


class EpochSummary(L.Callback):
    """One line per epoch when no progress bar is shown (logs, CI)."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not on_validation_epoch_end: callbacks run before the module there, so its epoch metrics are not in yet
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        shown = " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()) if not k.endswith("_step"))
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown}", flush=True)
