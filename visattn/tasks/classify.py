"""Image classification as a LightningModule around a model built by ``visattn.build_model``."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from visattn.tasks.common import check_finite_loss, configure_optimizers, rng_state, set_rng_state
from visattn.tasks.finetune import keep_norms_frozen, norms_outside_blocks


class ClassificationModule(L.LightningModule):
    """Cross-entropy (optional label smoothing), AdamW/SGD with warm-up + cosine, top-1/top-5/macro-F1.

    The model is passed in, not built here. At fit start the model's parameters and MACs at
    ``img_size`` are logged to the logger's hyperparameters.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_classes: int,
        img_size: int,
        in_chans: int = 3,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        label_smoothing: float = 0.0,
        warmup_epochs: float = 1.0,
        attn_lr_scale: float = 1.0,
        freeze_bn: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.frozen_norms = norms_outside_blocks(model) if freeze_bn else []  # see visattn.tasks.finetune
        top5 = min(5, num_classes)
        metrics = MetricCollection({  # no compute groups: top-5 and macro-F1 must not share top-1 states
            "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "acc5": MulticlassAccuracy(num_classes, top_k=top5, average="micro"),
            "f1": MulticlassF1Score(num_classes, average="macro"),
        }, compute_groups=False)
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        self.complexity: dict[str, int] = {}

    def train(self, mode: bool = True) -> ClassificationModule:
        super().train(mode)
        keep_norms_frozen(getattr(self, "frozen_norms", []))  # also when nn.Module's init calls it
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        from visattn.complexity import count

        was_training = self.model.training
        size = self.hparams.img_size
        result = count(self.model, input_size=(1, self.hparams.in_chans, size, size))
        self.model.train(was_training)
        self.complexity = {"params": result.params, "macs": result.macs}
        for logger in self.loggers:
            logger.log_hyperparams(self.complexity)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection, stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        metrics.update(logits.detach().float(), labels)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, sync_dist=not on_step,
                 batch_size=len(labels))
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=len(labels))
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self._step(batch, self.train_metrics, "train")
        check_finite_loss(self, loss, {"cross_entropy": loss}, batch_idx)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, self.val_metrics, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, self.test_metrics, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.model(images).softmax(-1)

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizers(self, self.hparams)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["visattn_rng"] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "visattn_rng" in checkpoint:
            set_rng_state(checkpoint["visattn_rng"])
