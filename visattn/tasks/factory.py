"""The one place that chooses between classification and detection: per task, the data module, the Lightning
module and its options, the metric that picks the best checkpoint and a sweep's default metric. The model itself
is built from a ``ModelSpec`` (``visattn.models.spec``, which knows each task's builder)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning as L
from torch import nn

from visattn.config import TrainConfig
from visattn.data.datamodule import ClassificationDataModule
from visattn.data.detect.datamodule import DetectionDataModule
from visattn.errors import ConfigError
from visattn.models.spec import ModelSpec
from visattn.tasks.classify import ClassificationModule
from visattn.tasks.detect import DetectionModule

DataModule = ClassificationDataModule | DetectionDataModule


@dataclass(frozen=True)
class Task:
    """What a task is made of. ``options``: the task module's own arguments from the config (its data's channels
    given); ``evaluation``: further arguments when a module only evaluates a checkpoint."""

    name: str
    datamodule: type[L.LightningDataModule]
    module: type[L.LightningModule]
    monitor: str  # the validation metric best.ckpt and early stopping follow (higher is better)
    metric: str  # a sweep's default metric: a dotted key of metrics.json
    options: Callable[[TrainConfig, int], dict[str, Any]] = lambda config, in_chans: {}
    evaluation: dict[str, Any] = field(default_factory=dict)


TASKS: dict[str, Task] = {
    "classify": Task("classify", ClassificationDataModule, ClassificationModule, monitor="val/acc",
                     metric="test.acc", options=lambda config, in_chans: {"in_chans": in_chans,
                                                                          "label_smoothing": config.label_smoothing}),
    # the checkpoint's weights are the averaged ones: an evaluation averages nothing more
    "detect": Task("detect", DetectionDataModule, DetectionModule, monitor="val/map", metric="test.map",
                   evaluation={"ema": False}),
}


def task_of(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


def build_datamodule(config: TrainConfig, *, stage: str | None = "fit") -> DataModule:
    """The run's data module (``data_args`` are its data set's own options), set up for ``stage`` (None: not yet)."""
    datamodule = task_of(config.task).datamodule(
        name=config.data, data_dir=config.data_dir, img_size=config.img_size, batch_size=config.batch_size,
        num_workers=config.num_workers, seed=config.seed, augment=config.augment or None, limit=config.limit,
        skip_bad_images=config.skip_bad_images, verify_images=config.verify_images,
        dataset_options=config.data_args or None)
    if stage is not None:
        datamodule.setup(stage)
    return datamodule


def model_spec(config: TrainConfig, datamodule: DataModule) -> ModelSpec:
    """The spec of the run's model: its config with the classes and channels of its data."""
    return ModelSpec.from_config(config.to_dict(), num_classes=datamodule.num_classes,
                                 in_chans=getattr(datamodule, "in_chans", 3), class_names=datamodule.class_names)


def build_module(config: TrainConfig, model: nn.Module, *, num_classes: int, in_chans: int = 3,
                 evaluation: bool = False) -> L.LightningModule:
    """The task's Lightning module around ``model`` with the run's optimisation settings; ``evaluation``: for
    testing a checkpoint (``Trainer.test``), not for training."""
    task = task_of(config.task)
    return task.module(model, num_classes=num_classes, img_size=config.img_size, lr=config.lr,
                       weight_decay=config.weight_decay, optimizer=config.optimizer, momentum=config.momentum,
                       warmup_epochs=config.warmup_epochs, attn_lr_scale=float(config.attn_lr_scale),
                       freeze_bn=config.freeze_bn, **task.options(config, in_chans),
                       **(task.evaluation if evaluation else {}))
