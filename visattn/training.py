"""Train one run: config -> run directory with config.yaml, checkpoints, logs and metrics.json."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from visattn.config import (
    LOCATION_KEYS,
    SAFE_ON_RESUME,
    ConfigError,
    TrainConfig,
    attn_label,
    check_name,
    effective_init,
    global_rank,
    logger_names,
    make_config,
    require_loggers,
)
from visattn.extras import require
from visattn.models.weights import measure_output_change
from visattn.perf import cpu_model, resolve_precision
from visattn.registry import check_kwargs
from visattn.results import ResultsCollector, write_run_results
from visattn.rundir import (
    CHECKPOINTS,
    CONFIG_FILE,
    ERROR_FILE,
    LOGS,
    METRICS_FILE,
    RUN_MARKER,
    START_FILE,
    DirLock,
    RunFinished,
    check_tree,
    claim_run_dir,
    clear_dir,
    ensure_marker,
    finished_metrics,
    keep_previous_logs,
    save_config,
    saved_config,
    write_error,
    write_json_atomic,
)
from visattn.tasks.common import (
    AtomicCheckpointIO,
    EpochSummary,
    NonFiniteLossError,
    ThroughputMonitor,
    make_optimizer,
    quiet_lightning,
)
from visattn.tasks.factory import build_datamodule, build_module, model_spec, task_of
from visattn.tasks.finetune import freeze_parameters
from visattn.tasks.monitors import BlockStatsMonitor
from visattn.tasks.progress import EpochBar, ProgressLines


def is_launched_child() -> bool:
    """True in every process but global rank 0: only rank 0 creates, clears or writes the run directory's set-up;
    the others (other GPUs of a node, every process of the other nodes) use the path that rank 0 sets up."""
    return global_rank() != 0


@dataclass
class PreparedRun:
    config: TrainConfig
    run_dir: Path
    datamodule: L.LightningDataModule
    module: L.LightningModule
    trainer: L.Trainer
    throughput: ThroughputMonitor
    resume_from: Path | None
    lock: DirLock | None = None  # held from set-up to the end of fit (None in DDP child processes)
    results: Any = None  # visattn.results.RunResults once fit has written the run's pictures and tables


def run_dir_of(config: TrainConfig) -> Path:
    return Path(config.out) / check_name(config.run_name())


def resume_changes(saved: TrainConfig, config: TrainConfig, *, run_dir: Path) -> dict[str, tuple[Any, Any]]:
    """The keys ``config`` changes relative to the run's saved config; refuses any outside SAFE_ON_RESUME."""
    old, new = saved.to_dict(), config.to_dict()
    changes = {k: (old.get(k), v) for k, v in new.items() if k not in LOCATION_KEYS and old.get(k) != v}
    unsafe = {k: v for k, v in changes.items() if k not in SAFE_ON_RESUME}
    if unsafe:
        listed = "; ".join(f"{k}: {a!r} in the run, {b!r} given" for k, (a, b) in unsafe.items())
        raise ConfigError(f"--resume {run_dir} cannot change {', '.join(unsafe)} ({listed}): they define the run's "
                          "model, data, task or optimisation, and its checkpoint belongs to them. Drop them to "
                          "continue the run as it was, or start a new run with another --name. A resume may change "
                          f"only: {', '.join(SAFE_ON_RESUME)}")
    return changes


# A key every saved parameter group of an optimiser has, and a per-parameter state every state entry has
OPTIMIZER_SIGNATURES = {"adamw": ("betas", ("exp_avg", "exp_avg_sq")), "sgd": ("momentum", ("momentum_buffer",))}


def check_optimizer_state(path: Path, saved: Any, fresh: torch.optim.Optimizer, name: str) -> None:
    """Refuse ``last.ckpt``'s optimiser state unless it is this run's optimiser's, over the same parameters: a state
    of another optimiser would otherwise fail inside ``fit`` (as ``KeyError: 'step'``), after the run had changed."""

    def refuse(detail: str) -> ConfigError:
        return ConfigError(f"cannot resume from {path}: its optimiser state does not belong to this run's optimiser "
                          f"{name!r} over this model ({detail}); nothing was changed. Start again with --overwrite, "
                          "or resume with the optimiser the run was trained with")

    if not isinstance(saved, list) or len(saved) != 1 or not isinstance(saved[0], Mapping):
        raise refuse(f"{len(saved) if isinstance(saved, list) else 'no'} optimiser state(s) where 1 is expected")
    state, groups = saved[0].get("state"), saved[0].get("param_groups")
    if not isinstance(state, Mapping) or not isinstance(groups, list) or not all(isinstance(g, Mapping)
                                                                                 for g in groups):
        raise refuse("no state and param_groups")
    fresh_groups = fresh.param_groups
    sizes, fresh_sizes = [len(g.get("params", ())) for g in groups], [len(g["params"]) for g in fresh_groups]
    if sizes != fresh_sizes:
        raise refuse(f"parameter groups of {sizes} parameters, this model's of {fresh_sizes}")
    group_key, state_keys = OPTIMIZER_SIGNATURES[name]
    others = sorted(other for other, (key, _) in OPTIMIZER_SIGNATURES.items() if other != name and key in groups[0])
    if group_key not in groups[0] or others:
        kind = f"an {' or '.join(others)} state" if others else f"no {group_key!r} setting"
        raise refuse(f"its parameter groups hold {kind}")
    for group, fresh_group in zip(groups, fresh_groups, strict=True):
        for index, param in zip(group["params"], fresh_group["params"], strict=True):
            entry = state.get(index)
            if entry is None:
                continue
            if not isinstance(entry, Mapping) or not all(key in entry for key in state_keys):
                found = sorted(entry) if isinstance(entry, Mapping) else type(entry).__name__
                raise refuse(f"parameter state with {found}, not {list(state_keys)}")
            for key in state_keys:
                if isinstance(entry[key], torch.Tensor) and entry[key].shape != param.shape:
                    raise refuse(f"{key} of shape {tuple(entry[key].shape)} for a parameter of shape "
                                 f"{tuple(param.shape)}")


def make_run_optimizer(module: L.LightningModule, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``fit`` will build, made now so that a value torch refuses stops the set-up, not the run."""
    try:
        return make_optimizer(module.model, name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay,
                              momentum=config.momentum)
    except ValueError as err:
        raise ConfigError(f"the optimiser {config.optimizer!r} refused the settings: {err}") from err


def check_batch_norm(module: L.LightningModule, config: TrainConfig) -> None:
    """BatchNorm cannot train on a batch of one image (torch stops at the first step with its own message)."""
    if config.batch_size >= 2:
        return
    norms = [name for name, layer in module.model.named_modules()
             if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        raise ConfigError(f"batch_size 1 cannot train {config.backbone}: its BatchNorm layers ({norms[0]} and "
                          f"{len(norms) - 1} more) need at least 2 images per training batch; use --batch-size 2 "
                          "or more")


def load_resume_checkpoint(path: Path, module: L.LightningModule, optimizer: torch.optim.Optimizer,
                           config: TrainConfig) -> None:
    """Load ``last.ckpt`` (``weights_only=True``) into the rebuilt module and check its optimiser state: a
    truncated, corrupt, unsafe or mismatched file fails here, before anything in the run directory changes."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        detail = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(err)).split())[:300]  # torch's text has ANSI bold
        raise ConfigError(f"cannot resume from {path}: the file is truncated, corrupt, or holds more than tensors "
                         f"and plain values (it is loaded with weights_only=True) ({type(err).__name__}: "
                         f"{detail})") from err
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise ConfigError(f"cannot resume from {path}: it is not a Lightning checkpoint (no state_dict)")
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:400]
        raise ConfigError(f"cannot resume from {path}: it does not fit the model of the run's config.yaml "
                         f"({detail})") from err
    check_optimizer_state(path, checkpoint.get("optimizer_states"), optimizer, config.optimizer)


def training_module(config: TrainConfig, datamodule: Any) -> L.LightningModule:
    """The task module around a freshly built model (``pretrained`` loaded if set)."""
    model = model_spec(config, datamodule).build(pretrained=config.pretrained)
    prepare_finetune(model, config, datamodule)
    module = build_module(config, model, num_classes=datamodule.num_classes,
                            in_chans=getattr(datamodule, "in_chans", 3))
    return apply_speed_options(module, config)


def prepare_finetune(model: torch.nn.Module, config: TrainConfig, datamodule: Any) -> None:
    """Freeze what ``config.freeze`` names, and measure what the inserted blocks do to a pretrained network's output
    on a few of the run's own validation images (the load report prints it; metrics.json keeps it)."""
    freeze_parameters(model, config.freeze)
    report = getattr(model, "pretrained_report", None)
    if report is not None:
        images = next(iter(datamodule.val_dataloader()))[0][:8]
        with torch.random.fork_rng(devices=[]):  # a loader draws its base seed: training must not see this pass
            report.output_change = measure_output_change(model, images)


def apply_speed_options(module: L.LightningModule, config: TrainConfig) -> L.LightningModule:
    """``channels_last``: NHWC weights (convolutions then run NHWC); ``compile``: ``nn.Module.compile`` in place,
    so state-dict keys, checkpoints and export stay as without it. Measured per backbone in benchmarks/README.md."""
    if getattr(config, "channels_last", False):
        module.model.to(memory_format=torch.channels_last)
    if getattr(config, "compile", False):
        module.model.compile()
    return module


TENSORBOARD_DIR, MLFLOW_DIR = "tb", "mlruns"  # inside the run directory; W&B makes its own "wandb" folder there


def make_loggers(config: TrainConfig, run_dir: Path) -> list[Logger]:
    """Lightning's loggers of ``config.logger``, each writing inside ``run_dir`` (Lightning logs on rank 0 only).

    CSV always, first (``logs/metrics.csv``: results.png, sweep reports, resume's ``metrics.partN.csv``);
    TensorBoard into ``tb/``; MLflow into the local file store ``mlruns/`` unless ``MLFLOW_TRACKING_URI`` names
    another (experiment and run named after the run); W&B offline into ``wandb/`` unless ``WANDB_MODE`` is set
    (project ``WANDB_PROJECT``, else ``visattn``). A resumed run starts a new MLflow or W&B run."""
    names = logger_names(config.logger)
    require_loggers(names)
    loggers: list[Logger] = [CSVLogger(run_dir, name=LOGS, version="")]
    if "tensorboard" in names:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name=TENSORBOARD_DIR, version="", default_hp_metric=False))
    if "mlflow" in names:
        from lightning.pytorch.loggers import MLFlowLogger

        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir / MLFLOW_DIR).resolve().as_uri()
        loggers.append(MLFlowLogger(experiment_name=run_dir.name, run_name=run_dir.name, tracking_uri=tracking_uri))
    if "wandb" in names:
        from lightning.pytorch.loggers import WandbLogger

        # mode goes on to wandb.init; None leaves it to WANDB_MODE
        loggers.append(WandbLogger(name=run_dir.name, save_dir=str(run_dir),
                                   project=os.environ.get("WANDB_PROJECT") or "visattn",
                                   mode=None if os.environ.get("WANDB_MODE") else "offline"))
    return loggers


def build_trainer(config: TrainConfig, run_dir: Path, *, resuming: bool) -> tuple[L.Trainer, ThroughputMonitor]:
    """The Trainer with checkpoints, logs and callbacks in ``run_dir``; writes nothing there yet."""
    # precision "auto" is resolved here, for this machine; metrics.json records the choice and the reason
    precision, precision_reason = resolve_precision(config.precision, accelerator=config.accelerator)
    throughput = ThroughputMonitor(precision_reason=precision_reason)
    monitor = task_of(config.task).monitor
    callbacks: list[L.Callback] = [
        ModelCheckpoint(dirpath=run_dir / CHECKPOINTS, filename="best", monitor=monitor, mode="max",
                        save_top_k=1, enable_version_counter=False),
        # Lightning's save_last only writes when a best checkpoint is written; resume needs one every epoch
        ModelCheckpoint(dirpath=run_dir / CHECKPOINTS, filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False),
        LearningRateMonitor(logging_interval="epoch"),
        throughput,
        BlockStatsMonitor(),  # e.g. an STN's theta statistics, and a warning line for a degenerate grid
        ResultsCollector(task=config.task),  # per-class results of the final test loop (visattn.results)
    ]
    if config.early_stopping:
        callbacks.append(EarlyStopping(monitor=monitor, mode="max", patience=config.early_stopping))
    if config.visualize_every:
        require("matplotlib", purpose="--visualize-every (attention figures during training)")
        from visattn.viz.callback import AttentionFigures

        callbacks.append(AttentionFigures(every_n_epochs=config.visualize_every, out_dir=run_dir / "figures"))
    loggers = make_loggers(config, run_dir)
    progress = sys.stdout is not None and sys.stdout.isatty()  # None: started with stdout closed
    if progress:  # a bar with the epoch line's columns, and the epoch line above it at each epoch's end
        callbacks.append(EpochBar(throughput, monitor=monitor))
    else:  # a log: the epoch line, and a progress line every 30 s within a long epoch
        callbacks += [EpochSummary(throughput, monitor=monitor), ProgressLines()]
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
    try:
        return L.Trainer(**trainer_args), throughput
    except MisconfigurationException as err:  # e.g. --accelerator gpu on a machine without one: the user's choice
        raise ConfigError(f"lightning.Trainer refused the settings (accelerator {config.accelerator!r}, devices "
                          f"{config.devices!r}, strategy {config.strategy!r}, precision {config.precision!r}): "
                          f"{err}") from err


def prepare(config: TrainConfig) -> PreparedRun:
    """Everything before the first step; every user error surfaces here, before any training.

    All or nothing: the run directory changes (``--overwrite`` clearing, log rotation, config.yaml) only after the
    data, the model, the optimiser, the trainer and, for a resume, the checkpoint have all been set up; a failure
    removes only what this call created. The directory stays locked until ``fit`` ends. ``--resume`` of a finished
    run whose ``epochs`` was not raised raises ``RunFinished`` and changes nothing.
    """
    quiet_lightning()  # every run, also a sweep's and a library call's
    require_loggers(config.logger)  # a missing logger package stops here, before the run directory is claimed
    run_dir = run_dir_of(config)
    last = run_dir / CHECKPOINTS / "last.ckpt"
    # a resumed model takes every weight from last.ckpt: the pretrained file need not exist any more
    build_config = dataclasses.replace(config, pretrained=None) if config.resume else config
    if is_launched_child():  # DDP processes started by rank 0, which owns the directory
        done = finished_metrics(run_dir) if config.resume else None
        if done is not None and config.epochs <= done["epochs"]:
            raise RunFinished(run_dir, done, config.epochs)  # rank 0 does not train it either
        L.seed_everything(config.seed, workers=True, verbose=False)
        datamodule = build_datamodule(config)
        module = training_module(build_config, datamodule)
        resume_from = last if config.resume and last.is_file() else None
        trainer, throughput = build_trainer(config, run_dir, resuming=resume_from is not None)
        return PreparedRun(config, run_dir, datamodule, module, trainer, throughput, resume_from)
    claim = claim_run_dir(run_dir, out=config.out, resume=config.resume, overwrite=config.overwrite)
    try:
        changes: dict[str, tuple[Any, Any]] = {}
        if config.resume:
            check_tree(run_dir)  # no link or FIFO among its checkpoints, logs and metrics
            changes = resume_changes(saved_config(run_dir), config, run_dir=run_dir)
            done = finished_metrics(run_dir)
            if done is not None and config.epochs <= done["epochs"]:
                raise RunFinished(run_dir, done, config.epochs)
            if not last.is_file():
                raise ConfigError(f"cannot resume {run_dir}: {last} does not exist (the run stopped before its "
                                  "first checkpoint); start it again with --overwrite")
        L.seed_everything(config.seed, workers=True, verbose=False)
        datamodule = build_datamodule(config)
        module = training_module(build_config, datamodule)
        check_batch_norm(module, config)
        optimizer = make_run_optimizer(module, config)
        if config.resume:
            load_resume_checkpoint(last, module, optimizer, config)
        trainer, throughput = build_trainer(config, run_dir, resuming=config.resume)
        # set-up succeeded: only from here on does the directory change
        if config.overwrite and claim.existing_run:
            clear_dir(run_dir)
        config = dataclasses.replace(config, run_id=ensure_marker(run_dir, RUN_MARKER))  # config.yaml repeats it
        if config.resume:
            keep_previous_logs(run_dir)
        (run_dir / ERROR_FILE).unlink(missing_ok=True)
        save_config(config, run_dir / CONFIG_FILE)
    except BaseException:
        claim.undo()
        raise
    for key, (old, new) in changes.items():
        print(f"visattn: resuming {run_dir} with {key} {old!r} -> {new!r}", file=sys.stderr)
    report = getattr(getattr(module, "model", None), "pretrained_report", None)
    if report is not None:  # a re-initialised classifier must be seen, not only logged
        print(f"visattn: pretrained: {report.summary()}", file=sys.stderr)
    return PreparedRun(config, run_dir, datamodule, module, trainer, throughput,
                       last if config.resume else None, claim.lock)


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
    try:
        return _fit(prepared)
    except NonFiniteLossError as err:
        if prepared.lock is not None:
            write_error(prepared.run_dir, err)
        raise NonFiniteLossError(f"{err} The run is kept in {prepared.run_dir} for inspection (error.json, logs/); "
                                 "lower --lr or add warm-up, then start a new run or --overwrite this one") from err
    except BaseException as err:
        if prepared.lock is not None:
            write_error(prepared.run_dir, err)
        raise
    finally:
        if prepared.lock is not None:
            prepared.lock.release()


def pretrained_start(prepared: PreparedRun) -> dict[str, Any]:
    """What loading did (tensors loaded, the inserted blocks' relative change of the output) and the validation and
    test metrics of the freshly built model before any step, measured by the run's own task module: what
    fine-tuning starts from. Written to ``START_FILE`` at once, so a resumed run still reports them."""
    path = prepared.run_dir / START_FILE
    if prepared.resume_from is not None:
        return json.loads(path.read_text()) if path.is_file() else {}
    report = getattr(prepared.module.model, "pretrained_report", None)
    probe = L.Trainer(accelerator=prepared.config.accelerator, devices=1, precision=prepared.trainer.precision,
                      logger=False, callbacks=[], enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    at_start: dict[str, dict[str, float]] = {}
    with torch.random.fork_rng(devices=[]):  # a loader draws its base seed: training must not see this pass
        for stage, run in (("val", probe.validate), ("test", probe.test)):
            values = run(prepared.module, datamodule=prepared.datamodule, verbose=False)
            at_start[stage] = {k.split("/", 1)[1]: float(v) for k, v in (values[0] if values else {}).items()}
    result = {"loaded_tensors": None if report is None else report.loaded,
              "output_change": None if report is None else report.output_change, "at_start": at_start}
    write_json_atomic(path, result)
    return result


def _fit(prepared: PreparedRun) -> dict[str, Any]:
    config, trainer, module = prepared.config, prepared.trainer, prepared.module
    torch_threads = torch.get_num_threads()
    start_info: dict[str, Any] = {}
    if config.pretrained and trainer.world_size == 1:
        start_info = pretrained_start(prepared)
        shown = ", ".join(f"{stage} {key} {value:.4f}" for stage, values in start_info.get("at_start", {}).items()
                          for key, value in values.items() if key in ("acc", "map"))
        if shown and prepared.resume_from is None:
            print(f"visattn: before training (step 0): {shown}", file=sys.stderr)
    prepared.throughput.begin_part(time.perf_counter())
    # weights_only=True explicitly: the environment (TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD) cannot turn on code loading
    trainer.fit(module, datamodule=prepared.datamodule,
                ckpt_path=str(prepared.resume_from) if prepared.resume_from else None, weights_only=True)
    train_time = prepared.throughput.train_time(time.perf_counter())  # all parts of a resumed run
    best = prepared.run_dir / CHECKPOINTS / "best.ckpt"
    test_results = trainer.test(module, datamodule=prepared.datamodule,
                                ckpt_path=str(best) if best.is_file() else None, verbose=False, weights_only=True)
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
        "in_chans": getattr(prepared.datamodule, "in_chans", 3),  # the input the model takes (latency, export)
        "test_size": test_split_size(trainer),  # images behind the test metrics (sampling intervals in sweeps)
        "test_is_val": bool(getattr(prepared.datamodule, "test_is_val", False)),  # no test split: val stands in
        "class_names": list(getattr(prepared.datamodule, "class_names", []) or []),
        "throughput_img_s": ruler["throughput_img_s"],
        "data_wait_frac": ruler["data_wait_frac"],
        "train_gflops_s": ruler["train_gflops_s"],  # 3 x forward FLOPs per image x images/s (visattn.perf)
        # share of the torch.mm peak of peak_dtype measured on this machine (named "mfu" before; visattn.perf)
        "matmul_peak_share": ruler["matmul_peak_share"],
        "peak_gflops_s": ruler["peak_gflops_s"],
        "peak_dtype": ruler["peak_dtype"],
        "peak_denominator": ruler["peak_denominator"],  # which peak: measured where, when, how
        "palm_mfu": ruler["palm_mfu"],  # PaLM-style MFU against a datasheet peak; None where none is known (CPUs)
        "palm_mfu_denominator": ruler["palm_mfu_denominator"],
        "precision": ruler["precision"],
        "precision_reason": ruler["precision_reason"],
        "channels_last": bool(getattr(config, "channels_last", False)),
        "compile": bool(getattr(config, "compile", False)),
        "cpu": cpu_model(),
        "torch_threads": torch_threads,
        "device": str(module.device),
    }
    if config.pretrained:
        metrics["pretrained"] = {"file": config.pretrained,
                                 "attn_init": effective_init(config.attn, config.attn_init), "freeze": config.freeze,
                                 "freeze_bn": config.freeze_bn, "attn_lr_scale": config.attn_lr_scale, **start_info}
    if trainer.is_global_zero:
        (prepared.run_dir / ERROR_FILE).unlink(missing_ok=True)
        write_json_atomic(prepared.run_dir / METRICS_FILE, metrics)
        prepared.results = run_results(prepared)
    return metrics


def run_results(prepared: PreparedRun) -> Any:
    """The run's pictures and per-class table (``visattn.results``); a failure there is reported, and the run,
    whose metrics.json is written, still succeeds."""
    try:
        return write_run_results(trainer=prepared.trainer, module=prepared.module, datamodule=prepared.datamodule,
                                 run_dir=prepared.run_dir, task=prepared.config.task,
                                 monitor=task_of(prepared.config.task).monitor)
    except Exception as err:  # noqa: BLE001 - the trained run matters more than its pictures
        print(f"visattn: warning: the run's pictures and per-class table were not written: "
              f"{type(err).__name__}: {err}", file=sys.stderr)
        return None


def train(config: TrainConfig) -> dict[str, Any]:
    """Prepare and fit one run; the library entry point behind ``visattn train``. A finished run (``--resume``
    without more epochs) is left as it is and its metrics.json returned. A ``TrainConfig`` made directly (defaults
    left None) is resolved and checked as the command line's is (``make_config``)."""
    config = make_config({}, config.to_dict(), source="TrainConfig")
    try:
        prepared = prepare(config)
    except RunFinished as done:
        return done.metrics
    return fit(prepared)

