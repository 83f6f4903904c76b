"""Object detection as a LightningModule around a ``Detector`` built by ``visattn.models.build_detector``.

Batch contract: ``(images, targets)``; images float32 (B, 3, S, S) normalised, targets a list of B dicts
``{"boxes": (N, 4) float xyxy in input pixels, "labels": (N,) long, "image_id": int}``, N may be 0.

With ``ema`` (the default, as YOLO) validation, test and predict use an exponential moving average
of the weights. Checkpoints then hold the averaged weights as ``state_dict`` (what export, ``load`` and
``pretrained`` read) and the trained weights under ``"visattn_ema"``; resuming puts each back in place.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics.detection import MeanAveragePrecision

from visattn.errors import BadValueError
from visattn.layers import require
from visattn.losses.detect import DetectionLoss
from visattn.models.detector import Detector, postprocess
from visattn.tasks.common import check_finite_loss, configure_optimizers, rng_state, set_rng_state
from visattn.tasks.finetune import keep_norms_frozen, norms_outside_blocks

Batch = tuple[torch.Tensor, list[dict[str, Any]]]
MAP_KEYS = {"map": "map", "map50": "map_50", "map75": "map_75", "map_small": "map_small",
            "map_medium": "map_medium", "map_large": "map_large", "mar100": "mar_100"}


def coco_backend() -> str:
    """torchmetrics' mAP backend: faster_coco_eval when installed (faster), else pycocotools."""
    from visattn.extras import available, require

    if available("faster_coco_eval"):
        return "faster_coco_eval"
    require("pycocotools", purpose="detection mAP (torchmetrics' COCO evaluation)")
    return "pycocotools"


class ModelEMA:
    """YOLOv5/v8's weight EMA: ``ema = d * ema + (1 - d) * model``, ``d = decay * (1 - exp(-updates / tau))``.

    Held outside the LightningModule's module tree, so its ``state_dict`` keeps only ``model.*`` keys.
    Buffers (BatchNorm statistics) are averaged too; integer buffers are copied.
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.9999, tau: float = 2000.0) -> None:
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        weight = self.decay * (1.0 - math.exp(-self.updates / self.tau))
        own = self.module.state_dict()
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                own[name].lerp_(value.detach().to(own[name].dtype), 1.0 - weight)
            else:
                own[name].copy_(value)


class DetectionModule(L.LightningModule):
    """TAL + BCE/CIoU/DFL loss, AdamW/SGD with warm-up + cosine, COCO mAP (torchmetrics, pycocotools).

    Logs ``train/loss`` and its terms ``train/loss_cls``, ``train/loss_box``, ``train/loss_dfl``, the
    same under ``val/``, and ``val/map``, ``val/map50``, ``val/map75`` (``test/...`` likewise). At fit
    start the model's parameters and MACs at ``img_size`` go to ``self.complexity`` and the loggers.
    """

    def __init__(
        self,
        model: Detector,
        *,
        num_classes: int,
        img_size: int,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        warmup_epochs: float = 1.0,
        ema: bool = True,
        ema_decay: float = 0.9999,
        ema_tau: float = 2000.0,
        conf_threshold: float = 0.001,
        iou_threshold: float = 0.6,
        max_det: int = 100,
        attn_lr_scale: float = 1.0,
        freeze_bn: bool = False,
    ) -> None:
        super().__init__()
        if getattr(model, "num_classes", None) != num_classes:
            raise BadValueError(f"DetectionModule: num_classes={num_classes} but the model predicts "
                             f"{getattr(model, 'num_classes', None)} classes; build it with the same count")
        require(0.0 < ema_decay < 1.0, "DetectionModule", "ema_decay", "in (0, 1)", ema_decay)
        require(ema_tau > 0, "DetectionModule", "ema_tau", "> 0", ema_tau)
        self.model = model
        self.save_hyperparameters(ignore=["model"])
        self.frozen_norms = norms_outside_blocks(model) if freeze_bn else []  # see visattn.tasks.finetune
        self.criterion = DetectionLoss(num_classes=num_classes, strides=model.strides, reg_max=model.head.reg_max)
        self.ema = ModelEMA(model, decay=ema_decay, tau=ema_tau) if ema else None
        self.val_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=coco_backend())
        self.test_map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend=coco_backend())
        self.complexity: dict[str, int] = {}

    def eval_model(self) -> Detector:
        """The model used for validation, test and predict: the EMA copy (on this module's device) or the model."""
        if self.ema is None:
            return self.model
        self.ema.module.to(self.device)
        return self.ema.module

    def train(self, mode: bool = True) -> DetectionModule:
        super().train(mode)
        keep_norms_frozen(getattr(self, "frozen_norms", []))  # also when nn.Module's init calls it
        return self

    def forward(self, images: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        return self.model(images)

    def on_fit_start(self) -> None:
        from visattn.complexity import count

        was_training = self.model.training
        size = self.hparams.img_size
        result = count(self.model, input_size=(1, self.model.in_chans, size, size))
        self.model.train(was_training)
        self.complexity = {"params": result.params, "macs": result.macs}
        for logger in self.loggers:
            logger.log_hyperparams(self.complexity)

    def _log_losses(self, losses: dict[str, torch.Tensor], stage: str, batch_size: int) -> None:
        on_step = stage == "train"
        self.log(f"{stage}/loss", losses["total"], on_step=on_step, on_epoch=True, prog_bar=True,
                 sync_dist=not on_step, batch_size=batch_size)
        for name, value in losses.items():
            if name != "total":
                self.log(f"{stage}/loss_{name}", value, on_step=on_step, on_epoch=True, sync_dist=not on_step,
                         batch_size=batch_size)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.criterion(self.model.forward_raw(images), targets)
        check_finite_loss(self, losses["total"], losses, batch_idx)
        self._log_losses(losses, "train", len(images))
        return losses["total"]

    def on_train_start(self) -> None:
        if self.ema is not None:
            self.ema.module.to(self.device)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    def _evaluate(self, batch: Batch, metric: MeanAveragePrecision, stage: str) -> None:
        images, targets = batch
        model = self.eval_model()
        raw = model.forward_raw(images)
        self._log_losses(self.criterion(raw, targets), stage, len(images))
        detections = postprocess(model.decode(raw), conf_threshold=self.hparams.conf_threshold,
                                 iou_threshold=self.hparams.iou_threshold, max_det=self.hparams.max_det,
                                 multi_label=True)
        metric.update(detections, [{"boxes": t["boxes"].float().reshape(-1, 4), "labels": t["labels"].long()}
                                   for t in targets])

    def _log_map(self, metric: MeanAveragePrecision, stage: str) -> None:
        result = metric.compute()
        for name, key in MAP_KEYS.items():
            self.log(f"{stage}/{name}", result[key].float().to(self.device), prog_bar=name == "map", sync_dist=True)
        metric.reset()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_map, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_map(self.val_map, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_map, "test")

    def on_test_epoch_end(self) -> None:
        self._log_map(self.test_map, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        """Detections at confidence 0.25 (boxes xyxy in input pixels, scores, labels), one dict per image."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        model = self.eval_model()
        return postprocess(model.decode(model.forward_raw(images)), conf_threshold=0.25,
                           iou_threshold=self.hparams.iou_threshold, max_det=self.hparams.max_det)

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizers(self, self.hparams)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["visattn_rng"] = rng_state()
        if self.ema is None:
            return
        state = checkpoint["state_dict"]
        trained = {key: value for key, value in state.items() if key.startswith("model.")}
        checkpoint["visattn_ema"] = {"updates": self.ema.updates, "trained": trained}
        for key, value in self.ema.module.state_dict().items():
            state[f"model.{key}"] = value.detach().clone()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Runs before Lightning loads ``state_dict``: swap the trained weights back in, keep the average aside."""
        if "visattn_rng" in checkpoint:
            set_rng_state(checkpoint["visattn_rng"])
        state = checkpoint["state_dict"]
        averaged = {key[len("model."):]: value for key, value in state.items() if key.startswith("model.")}
        saved = checkpoint.get("visattn_ema")
        if saved is not None:
            state.update(saved["trained"])
        if self.ema is not None:
            self.ema.module.load_state_dict(averaged)
            self.ema.updates = saved["updates"] if saved is not None else 0
