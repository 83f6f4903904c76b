"""Train one run: config -> run directory with config.yaml, checkpoints, logs and metrics.json."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from visattn.config import ConfigError, TrainConfig, attn_label, save_config
from visattn.perf import cpu_model, resolve_precision
from visattn.registry import check_kwargs
from visattn.tasks.common import AtomicCheckpointIO, EpochSummary, ThroughputMonitor
from visattn.tasks.monitors import BlockStatsMonitor

CHECKPOINTS = "checkpoints"


def is_launched_child() -> bool:
    """True in the extra processes a DDP launcher starts (they must not touch the run directory's set-up)."""
    return os.environ.get("LOCAL_RANK", "0") != "0" or os.environ.get("NODE_RANK", "0") != "0"


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    os.replace(tmp, path)


@dataclass
class PreparedRun:
    config: TrainConfig
    run_dir: Path
    datamodule: L.LightningDataModule
    module: L.LightningModule
    trainer: L.Trainer
    throughput: ThroughputMonitor
    resume_from: Path | None


def prepare_run_dir(config: TrainConfig) -> tuple[Path, Path | None]:
    run_dir = Path(config.out) / config.run_name()
    last = run_dir / CHECKPOINTS / "last.ckpt"
    if is_launched_child():
        return run_dir, (last if config.resume and last.is_file() else None)
    if run_dir.exists() and any(run_dir.iterdir()):
        if config.overwrite:
            shutil.rmtree(run_dir)
        elif not config.resume:
            raise ConfigError(f"run directory {run_dir} already exists; pass --resume to continue it, "
                              "--overwrite to replace it, or --name to choose another")
    if config.resume and config.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; pass one")
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_from = last if config.resume and last.is_file() else None
    if config.resume and resume_from is None:
        print(f"visattn: no {last} to resume from; starting {run_dir} from scratch", file=sys.stderr)
    save_config(config, run_dir / "config.yaml")
    return run_dir, resume_from


def build_datamodule(config: TrainConfig) -> L.LightningDataModule:
    if config.task == "detect":
        from visattn.data.detect import DetectionDataModule as DataModule
    else:
        from visattn.data import ClassificationDataModule as DataModule
    args = dict(name=config.data, data_dir=config.data_dir, img_size=config.img_size, batch_size=config.batch_size,
                num_workers=config.num_workers, seed=config.seed, augment=config.augment or None,
                limit=config.limit, skip_bad_images=config.skip_bad_images)
    if config.task == "detect":
        check_kwargs(f"data set {config.data!r} (data_args)", DataModule, config.data_args)
        datamodule = DataModule(**args, **config.data_args)
    else:
        datamodule = DataModule(**args, dataset_options=config.data_args or None)
    datamodule.setup("fit")
    return datamodule


def build_module(config: TrainConfig, datamodule: Any) -> L.LightningModule:
    from visattn.build import build_model

    common = dict(lr=config.lr, weight_decay=config.weight_decay, optimizer=config.optimizer,
                  momentum=config.momentum, warmup_epochs=config.warmup_epochs)
    if config.task == "detect":
        from visattn.detect import build_detector
        from visattn.tasks.detect import DetectionModule

        model = build_detector(config.backbone, attn=config.attn, num_classes=datamodule.num_classes,
                               neck=config.neck, scale=config.scale, img_size=config.img_size,
                               pretrained=config.pretrained, backbone_args=config.backbone_args)
        return apply_speed_options(DetectionModule(model, num_classes=datamodule.num_classes,
                                                   img_size=config.img_size, **common), config)
    from visattn.tasks.classify import ClassificationModule

    model = build_model(config.backbone, attn=config.attn, num_classes=datamodule.num_classes,
                        in_chans=datamodule.in_chans, img_size=config.img_size, pretrained=config.pretrained,
                        backbone_args=config.backbone_args)
    module = ClassificationModule(model, num_classes=datamodule.num_classes, img_size=config.img_size,
                                  in_chans=datamodule.in_chans, label_smoothing=config.label_smoothing, **common)
    return apply_speed_options(module, config)


def apply_speed_options(module: L.LightningModule, config: TrainConfig) -> L.LightningModule:
    """``channels_last``: NHWC weights (convolutions then run NHWC); ``compile``: ``nn.Module.compile`` in place,
    so state-dict keys, checkpoints and export stay as without it. Measured per backbone in benchmarks/README.md."""
    if getattr(config, "channels_last", False):
        module.model.to(memory_format=torch.channels_last)
    if getattr(config, "compile", False):
        module.model.compile()
    return module


def monitor_metric(config: TrainConfig) -> str:
    return "val/map" if config.task == "detect" else "val/acc"


def keep_previous_logs(run_dir: Path) -> None:
    """Lightning's CSV logger starts its file anew; a resumed run keeps the earlier rows as ``metrics.partN.csv``."""
    current = run_dir / "logs" / "metrics.csv"
    if current.is_file():
        part = len(list(current.parent.glob("metrics.part*.csv")))
        os.replace(current, current.with_name(f"metrics.part{part}.csv"))


def read_metrics_csv(run_dir: str | Path) -> list[dict[str, str]]:
    """All logged rows of a run (earlier parts of a resumed run first), one row per logging call."""
    logs = Path(run_dir) / "logs"
    files = sorted(logs.glob("metrics.part*.csv"), key=lambda p: int(p.stem.split("part")[1]))
    rows: list[dict[str, str]] = []
    for path in [*files, logs / "metrics.csv"]:
        if path.is_file():
            with open(path, newline="") as handle:
                rows.extend(csv.DictReader(handle))
    return rows


def build_trainer(config: TrainConfig, run_dir: Path, *, resuming: bool) -> tuple[L.Trainer, ThroughputMonitor]:
    if resuming and not is_launched_child():
        keep_previous_logs(run_dir)
    # precision "auto" is resolved here, for this machine; metrics.json records the choice and the reason
    precision, precision_reason = resolve_precision(config.precision, accelerator=config.accelerator)
    throughput = ThroughputMonitor(precision_reason=precision_reason)
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=run_dir / CHECKPOINTS, filename="best", monitor=monitor_metric(config), mode="max",
                        save_top_k=1, enable_version_counter=False),
        # Lightning's save_last only writes when a best checkpoint is written; resume needs one every epoch
        ModelCheckpoint(dirpath=run_dir / CHECKPOINTS, filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False),
        LearningRateMonitor(logging_interval="epoch"),
        throughput,
        BlockStatsMonitor(),  # e.g. an STN's theta statistics, and a warning line for a degenerate grid
    ]
    if config.early_stopping:
        callbacks.append(EarlyStopping(monitor=monitor_metric(config), mode="max", patience=config.early_stopping))
    if config.visualize_every:
        from visattn.viz.callback import AttentionFigures

        callbacks.append(AttentionFigures(every_n_epochs=config.visualize_every, out_dir=run_dir / "figures"))
    loggers: list[Any] = [CSVLogger(run_dir, name="logs", version="")]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="tb", version=""))
    except ImportError:
        pass
    progress = sys.stdout.isatty()
    if progress:
        from lightning.pytorch.callbacks import RichProgressBar

        callbacks.append(RichProgressBar())
    else:
        callbacks.append(EpochSummary(throughput, monitor=monitor_metric(config)))
    trainer_args: dict[str, Any] = dict(
        default_root_dir=run_dir, max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices,
        strategy=config.strategy, num_nodes=config.num_nodes, precision=precision, logger=loggers,
        callbacks=callbacks, plugins=[AtomicCheckpointIO()], enable_progress_bar=progress,
        enable_model_summary=False, log_every_n_steps=10,
        # the sanity check would draw from the global RNG that a resumed run has just restored
        num_sanity_val_steps=0 if resuming else 2,
    )
    check_kwargs("trainer", L.Trainer, config.trainer)
    trainer_args.update(config.trainer)
    return L.Trainer(**trainer_args), throughput


def prepare(config: TrainConfig) -> PreparedRun:
    """Everything before the first step; every user error surfaces here, before any training."""
    run_dir, resume_from = prepare_run_dir(config)
    try:
        L.seed_everything(config.seed, workers=True, verbose=False)
        datamodule = build_datamodule(config)
        module = build_module(config, datamodule)
        trainer, throughput = build_trainer(config, run_dir, resuming=resume_from is not None)
    except Exception:
        if resume_from is None and not is_launched_child() and not (run_dir / CHECKPOINTS).exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # leave nothing half-made behind
        raise
    report = getattr(getattr(module, "model", None), "pretrained_report", None)
    if report is not None:  # a re-initialised classifier must be seen, not only logged
        print(f"visattn: pretrained: {report.summary()}", file=sys.stderr)
    return PreparedRun(config, run_dir, datamodule, module, trainer, throughput, resume_from)


def test_split_size(trainer: L.Trainer) -> int | None:
    """Number of images in the split ``trainer.test`` just evaluated (None when the loader has no sized data set)."""
    loaders = trainer.test_dataloaders
    loader = loaders[0] if isinstance(loaders, (list, tuple)) and loaders else loaders
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return None


def fit(prepared: PreparedRun) -> dict[str, Any]:
    """Train, test the best checkpoint, write metrics.json; returns its content."""
    config, trainer, module = prepared.config, prepared.trainer, prepared.module
    torch_threads = torch.get_num_threads()
    start = time.perf_counter()
    trainer.fit(module, datamodule=prepared.datamodule,
                ckpt_path=str(prepared.resume_from) if prepared.resume_from else None)
    train_time = time.perf_counter() - start
    best = prepared.run_dir / CHECKPOINTS / "best.ckpt"
    test_results = trainer.test(module, datamodule=prepared.datamodule,
                                ckpt_path=str(best) if best.is_file() else None, verbose=False)
    test = {k.split("/", 1)[1]: float(v) for k, v in (test_results[0] if test_results else {}).items()}
    ruler = prepared.throughput.summary()
    metrics = {
        "task": config.task,
        "backbone": config.backbone,
        "attn": attn_label(config.attn),
        "data": config.data,
        "params": module.complexity.get("params"),
        "macs": module.complexity.get("macs"),
        "img_size": config.img_size,
        "epochs": config.epochs,
        "epochs_run": trainer.current_epoch,
        "seed": config.seed,
        "test": test,
        "best_val": None if trainer.checkpoint_callback.best_model_score is None
        else float(trainer.checkpoint_callback.best_model_score),
        "train_time_s": train_time,
        "resumed": prepared.resume_from is not None,
        "skipped_images": getattr(prepared.datamodule, "skipped_images", 0),
        "num_classes": prepared.datamodule.num_classes,
        "test_size": test_split_size(trainer),  # images behind the test metrics (sampling intervals in sweeps)
        "test_is_val": bool(getattr(prepared.datamodule, "test_is_val", False)),  # no test split: val stands in
        "class_names": list(getattr(prepared.datamodule, "class_names", []) or []),
        "throughput_img_s": ruler["throughput_img_s"],
        "data_wait_frac": ruler["data_wait_frac"],
        "train_gflops_s": ruler["train_gflops_s"],  # 3 x forward FLOPs per image x images/s (visattn.perf)
        "mfu": ruler["mfu"],  # share of the cached matmul peak of peak_dtype on this machine
        "peak_gflops_s": ruler["peak_gflops_s"],
        "peak_dtype": ruler["peak_dtype"],
        "precision": ruler["precision"],
        "precision_reason": ruler["precision_reason"],
        "channels_last": bool(getattr(config, "channels_last", False)),
        "compile": bool(getattr(config, "compile", False)),
        "cpu": cpu_model(),
        "torch_threads": torch_threads,
        "device": str(module.device),
    }
    if trainer.is_global_zero:
        write_json_atomic(prepared.run_dir / "metrics.json", metrics)
    return metrics


def train(config: TrainConfig) -> dict[str, Any]:
    """Prepare and fit one run; the library entry point behind ``tools/train.py``."""
    return fit(prepare(config))
