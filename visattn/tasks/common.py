"""Pieces shared by the task modules: optimiser + schedule, RNG state in checkpoints, throughput, atomic saves."""

from __future__ import annotations

import fnmatch
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch import nn

from visattn.config import VERBOSE_ENV
from visattn.errors import NonFiniteLossError
from visattn.perf import achieved_flops, amx_bf16_hint, describe_peak, mfu, palm_mfu, theoretical_peak
from visattn.rundir import atomic_file
from visattn.tasks.finetune import attn_lr_scales


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


# Lightning's warnings that say nothing true or useful about a visattn run: a small set has fewer batches than the
# logging interval (the epoch metrics are logged all the same), and "previous log files will be deleted" on resume
# (visattn moves them aside first: visattn.training.keep_previous_logs).
LIGHTNING_NOISE = (r".*smaller than the logging interval", r".*[Pp]revious log files in this directory will be deleted",
                   r".*exists and is not empty")


def quiet_lightning() -> None:
    """Silence the messages Lightning prints on every run that a user can do nothing about: the "try installing
    litlogger" advertisement, torch's ``LeafSpec`` deprecation raised inside Lightning's own pytree code and, unless
    ``VISATTN_VERBOSE=1`` (``--verbose``), its banners ("GPU available: False", "Restoring states from ...") and the
    warnings in ``LIGHTNING_NOISE``. Idempotent; DataLoader workers and DDP children inherit the filters."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropLitLoggerTip) for f in rank_zero.filters):
        rank_zero.addFilter(_DropLitLoggerTip())
    if os.environ.get(VERBOSE_ENV) == "1":
        return
    # the banners ("GPU available", "Restoring states", "`Trainer.fit` stopped") are INFO of these loggers; warnings
    # and errors stay, and so does "Initializing distributed: GLOBAL_RANK ..." (how many processes a DDP run has)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in LIGHTNING_NOISE:
        warnings.filterwarnings("ignore", message=pattern)


def declared(model: nn.Module, method: str) -> dict[str, Any]:
    """What sub-modules declare about their parameters, as ``{full parameter name: value}``.

    ``method`` is ``"no_weight_decay"`` (timm's convention: a set of names, relative to the module that
    declares them; fnmatch globs allowed) or ``"lr_scales"`` (a ``{name glob: factor}`` mapping). The
    model itself and every sub-module (a backbone, a block in a slot) may declare; where two modules
    cover one parameter, the innermost one wins.
    """
    names = [name for name, _ in model.named_parameters()]
    found: dict[str, Any] = {}
    for path, module in model.named_modules():  # parents come before their children
        declare = getattr(module, method, None)
        if not callable(declare):
            continue
        items = declare()
        pairs = items.items() if isinstance(items, dict) else ((pattern, True) for pattern in items)
        prefix = f"{path}." if path else ""
        for pattern, value in pairs:
            for name in fnmatch.filter(names, prefix + pattern):
                found[name] = value
    return found


def make_optimizer(
    model: nn.Module, *, name: str, lr: float, weight_decay: float, momentum: float,
    lr_multipliers: Mapping[str, float] | None = None,
) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum), with parameter groups the model's modules declare.

    No weight decay on biases, norms and other 1-d parameters, nor on what any module lists in
    ``no_weight_decay()`` (timm's convention: position tables, class tokens). A module's ``lr_scales()``
    (``{name glob: factor}``) multiplies the learning rate of the parameters it names, e.g. an STN's
    localisation net. ``lr_multipliers`` (``{parameter name: factor}``) multiply on top, e.g. the inserted blocks'
    ``attn_lr_scale``. Frozen parameters (``requires_grad=False``) are left out. Each group keeps its
    ``lr_scale`` and ``param_names``; the schedule scales every group's own learning rate.
    """
    no_decay = declared(model, "no_weight_decay")
    scales = declared(model, "lr_scales")
    for pname, factor in (lr_multipliers or {}).items():
        scales[pname] = float(scales.get(pname, 1.0)) * factor
    groups: dict[tuple[bool, float], list[tuple[str, nn.Parameter]]] = {}
    for pname, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = param.ndim > 1 and pname not in no_decay
        groups.setdefault((decays, float(scales.get(pname, 1.0))), []).append((pname, param))
    param_groups = [
        {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr": lr * scale, "lr_scale": scale}
        for (decays, scale), params in sorted(groups.items(), key=lambda item: (not item[0][0], -item[0][1]))
    ]
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    return torch.optim.AdamW(param_groups, lr=lr)


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
                               momentum=hp.momentum,
                               lr_multipliers=attn_lr_scales(module.model, float(hp.get("attn_lr_scale", 1.0))))
    total = max(1, int(module.trainer.estimated_stepping_batches))
    epochs = max(1, module.trainer.max_epochs or 1)
    warmup = min(total // 2, int(round(hp.warmup_epochs * total / epochs)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, warmup))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _precision(module: L.LightningModule) -> str:
    """The Lightning precision string of the module's trainer; ``"32"`` for a module stepped without one."""
    trainer = module._trainer  # the public property raises when the module is used outside a Trainer
    return "32" if trainer is None else str(trainer.precision)


def check_finite_loss(module: L.LightningModule, total: torch.Tensor, terms: dict[str, torch.Tensor],
                      batch_idx: int) -> None:
    """Raise :class:`NonFiniteLossError` naming the step and the loss terms when ``total`` is not finite."""
    if bool(torch.isfinite(total.detach()).all()):
        return
    shown = ", ".join(f"{name}={float(value.detach().float().mean()):.4g}" for name, value in terms.items())
    raise NonFiniteLossError(
        f"non-finite training loss at step {module.global_step + 1} (epoch {module.current_epoch + 1}, batch "
        f"{batch_idx + 1}): {shown}; lr {module.hparams.get('lr')}. Training stopped."
        + amx_bf16_hint(_precision(module), module.device.type)
    )


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
    """Write to a temporary file in the same folder, fsync, then rename (``visattn.rundir.atomic_file``): a kill
    never leaves half a checkpoint, and a failed write (a full disk) removes its temporary file and names the file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as handle:
            torch.save(checkpoint, handle)


class ThroughputMonitor(L.Callback):
    """Per epoch: training images/s, the share of step time spent waiting for data, and the ruler (visattn.perf):
    achieved training GFLOP/s (3 x forward FLOPs per image), its share of the matmul peak measured on this machine
    for the run's dtype (``matmul_peak_share``) and, on GPUs with a known datasheet peak, PaLM-style ``palm_mfu``.

    Time runs from the epoch's start to the end of its last training batch, so validation (which Lightning runs
    before ``on_train_epoch_end``) is not counted as training time.

    The per-epoch figures and the training time so far are saved in every checkpoint (``state_dict``), so a resumed
    run reports means over all its epochs and the sum of its parts' training times, never only the last part's:
    a resume that trains no epoch (killed just after ``fit`` ended) adds nothing it did not measure.
    """

    def __init__(self, *, measure_peak: bool = True, precision_reason: str = "") -> None:
        self.measure_peak = measure_peak
        self.precision_reason = precision_reason  # why the run's precision was chosen (``precision: auto``)
        self.precision = ""
        self.peak: dict[str, Any] | None = None
        self.dtype = "fp32"
        self.device = "cpu"
        self.reset()

    def reset(self) -> None:
        self.images = 0
        self.wait = 0.0
        self.busy = 0.0
        self.epoch_start = time.perf_counter()
        self.last_end: float | None = None
        self.batch_start = 0.0
        self.history: list[dict[str, float]] = []
        self.epoch = -1  # the epoch being trained (0-based), -1 before the first
        self.time_before = 0.0  # training time of the earlier parts of a resumed run (from its checkpoint)
        self.part_start: float | None = None  # when this part's ``fit`` started (``begin_part``)
        self.epochs_this_part = 0

    def begin_part(self, start: float) -> None:
        """Called with the time just before ``trainer.fit``: this part's training time runs from here."""
        self.part_start = start

    def train_time(self, now: float) -> float:
        """Training time of the whole run: the earlier parts' plus this one's (nothing if it trained no epoch)."""
        if self.part_start is None or (self.epochs_this_part == 0 and self.time_before > 0):
            return self.time_before
        return self.time_before + (now - self.part_start)

    def _epoch_stats(self, pl_module: L.LightningModule | None) -> dict[str, float]:
        elapsed = max((self.last_end or time.perf_counter()) - self.epoch_start, 1e-9)
        macs = getattr(pl_module, "complexity", {}).get("macs") or 0
        flops = achieved_flops(images=self.images, seconds=elapsed, macs_per_image=macs)
        share = mfu(flops, self.peak["flops"] if self.peak else None)
        stats = {
            "throughput_img_s": self.images / elapsed,
            "data_wait_frac": self.wait / max(self.wait + self.busy, 1e-9),
            "train_gflops_s": flops / 1e9,
            "epoch_train_s": elapsed,
        }
        if share is not None:
            stats["matmul_peak_share"] = share
            palm = palm_mfu(flops, self.dtype, pl_module.device) if pl_module is not None else None
            if palm is not None:
                stats["palm_mfu"] = palm
        return stats

    def state_dict(self) -> dict[str, Any]:
        """Saved with every checkpoint: the epochs measured so far and the training time up to now.

        Lightning saves the checkpoint of an epoch after its validation, before ``on_train_epoch_end``; an epoch
        whose training batches are done but not yet recorded is included here, so a resume never loses it.
        """
        history = [dict(h) for h in self.history]
        if self.images and (not history or history[-1].get("epoch") != self.epoch):
            history.append({**self._epoch_stats(self._module), "epoch": self.epoch})
        now = time.perf_counter()
        return {"history": history, "train_time_s": self.train_time(now) if self.part_start is not None
                else self.time_before, "precision": self.precision, "peak": self.peak, "dtype": self.dtype,
                "device": self.device}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state.get("history", [])]
        self.time_before = float(state.get("train_time_s", 0.0))
        self.precision = state.get("precision") or self.precision
        self.peak = state.get("peak") or self.peak
        self.dtype = state.get("dtype") or self.dtype
        self.device = state.get("device") or self.device

    _module: L.LightningModule | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._module = pl_module

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.precision = str(trainer.precision)
        self.device = str(pl_module.device)
        for logger in trainer.loggers:  # logs/hparams.yaml and TensorBoard: what "auto" became, and why
            logger.log_hyperparams({"precision": self.precision, "precision_reason": self.precision_reason})
        if self.measure_peak and self.peak is None and trainer.is_global_zero:
            from visattn.perf import matmul_peak, precision_dtype

            dtype = precision_dtype(str(trainer.precision))
            if pl_module.device.type == "cpu" and dtype == "fp16":
                dtype = "fp32"  # fp16 autocast on CPU: no fp16 matmul peak worth comparing with
            self.peak = matmul_peak(dtype, device=pl_module.device)
            self.dtype = dtype

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.images, self.wait, self.busy = 0, 0.0, 0.0
        self.epoch_start = self.last_end = time.perf_counter()
        self.epoch = trainer.current_epoch
        self.epochs_this_part += 1

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
        stats = self._epoch_stats(pl_module)
        if self.history and self.history[-1].get("epoch") == self.epoch:
            self.history.pop()  # recorded provisionally by a checkpoint taken after validation: now final
        self.history.append({**stats, "epoch": self.epoch})
        for key, value in stats.items():
            # only rank 0 knows the peak (it measures it): the shares are rank 0's, logged without a collective
            if key in ("matmul_peak_share", "palm_mfu"):
                pl_module.log(f"train/{key}", value, rank_zero_only=True)
            else:
                pl_module.log(f"train/{key}", value, sync_dist=True)

    def summary(self) -> dict[str, Any]:
        """Means over the epochs run (what metrics.json reports), and the peaks they were measured against, with a
        phrase naming each denominator."""
        out: dict[str, Any] = {}
        for key in ("throughput_img_s", "data_wait_frac", "train_gflops_s", "matmul_peak_share", "palm_mfu"):
            values = [h[key] for h in self.history if key in h]
            out[key] = sum(values) / len(values) if values else None
        out["peak_gflops_s"] = self.peak["flops"] / 1e9 if self.peak else None
        out["peak_dtype"] = self.peak["dtype"] if self.peak else None
        out["peak_denominator"] = describe_peak(self.peak)
        theoretical = theoretical_peak(self.dtype, self.device) if self.peak else None
        out["palm_mfu_denominator"] = (None if theoretical is None else
                                       f"datasheet dense {self.dtype} peak of {theoretical[1]}, "
                                       f"{theoretical[0] / 1e12:g} TFLOP/s")
        out["precision"] = self.precision or None
        out["precision_reason"] = self.precision_reason or None
        return out


METRIC_LABELS = {"val/acc": "val acc", "val/map": "val mAP50-95", "val/map50": "val mAP50"}


def metric_label(key: str) -> str:
    """What a logged metric is, in words a user reads: ``val/map`` -> ``val mAP50-95``."""
    return METRIC_LABELS.get(key, key.replace("/", " "))


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: fixed pieces for an aligned column."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class EpochSummary(L.Callback):
    """One short aligned line per epoch when no progress bar is shown (logs, CI); every metric stays in the
    CSV/TensorBoard logs. Printed at the end of the training epoch, after validation, so the train loss and the
    validation metric are this epoch's."""

    def __init__(self, throughput: ThroughputMonitor | None = None, *, monitor: str = "val/acc") -> None:
        self.throughput = throughput
        self.monitor = monitor
        self.fit_start: float | None = None
        self.first_epoch = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_start, self.first_epoch = time.perf_counter(), trainer.current_epoch  # a resume starts later

    def eta(self, trainer: L.Trainer) -> str:
        """Time left for the remaining epochs at this part's mean epoch time (training and validation)."""
        done = trainer.current_epoch + 1 - self.first_epoch
        left = (trainer.max_epochs or 0) - trainer.current_epoch - 1
        if self.fit_start is None or done < 1:
            return "-"
        return format_duration((time.perf_counter() - self.fit_start) / done * max(left, 0))

    def line(self, trainer: L.Trainer) -> str:
        metrics = trainer.callback_metrics
        width = len(str(trainer.max_epochs or 0))

        def value(key: str, fmt: str) -> str:
            return format(float(metrics[key]), fmt) if key in metrics else "-"

        stats = self.throughput.history[-1] if self.throughput and self.throughput.history else {}
        share = f"{100 * stats['matmul_peak_share']:5.1f}%" if "matmul_peak_share" in stats else "     -"
        return (f"epoch {trainer.current_epoch + 1:>{width}}/{trainer.max_epochs}  "
                f"train loss {value('train/loss_epoch', '7.4f'):>7}  {metric_label(self.monitor)} "
                f"{value(self.monitor, '6.4f'):>6}  "
                f"{stats.get('throughput_img_s', 0):7.1f} img/s  {stats.get('train_gflops_s', 0):6.1f} GFLOP/s  "
                f"{share} of mm peak  {stats.get('epoch_train_s', 0):6.1f}s  ETA {self.eta(trainer):>7}")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # every rank reads the metrics: reading them may reduce logged values across ranks (a collective that
        # rank 0 alone would wait on forever under DDP)
        text = self.line(trainer)
        if trainer.is_global_zero:
            print(text, flush=True)
