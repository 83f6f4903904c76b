"""Detection loss: task-aligned assignment (TOOD, Feng et al. 2021; as in YOLOv8), IoU-aware BCE, CIoU, DFL.

Assignment per ground-truth box: candidates are the anchor points strictly inside it; alignment is
``score^alpha * IoU^beta`` (score: the predicted probability of the box's class at the anchor, IoU:
of the anchor's predicted box with the gt); the ``topk`` best-aligned candidates become positives; an
anchor claimed by several boxes keeps the one its prediction overlaps most. Classification targets
are soft: one-hot times the alignment normalised so that each box's best anchor gets that box's best IoU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import complete_box_iou_loss, generalized_box_iou_loss

from visattn.errors import BadValueError
from visattn.heads.detect import box_distances, decode_boxes, encode_boxes, flatten_outputs
from visattn.layers import require

IOU_LOSSES = {"ciou": complete_box_iou_loss, "giou": generalized_box_iou_loss}


class Assignment(NamedTuple):
    fg_mask: torch.Tensor  # (B, A) bool: positive anchors
    gt_index: torch.Tensor  # (B, A) long: the gt box each anchor is assigned to (0 for background)
    target_boxes: torch.Tensor  # (B, A, 4) xyxy pixels
    target_labels: torch.Tensor  # (B, A) long
    target_scores: torch.Tensor  # (B, A, C) soft one-hot, zero for background


def pad_targets(targets: Sequence[dict[str, torch.Tensor]], *, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """List of {"boxes": (N, 4), "labels": (N,)} -> boxes (B, M, 4), labels (B, M), valid mask (B, M).

    M is the largest N; boxes with no width or height are dropped (no anchor can lie inside them).
    """
    kept = []
    for target in targets:
        boxes = target["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4)
        labels = target["labels"].to(device=device, dtype=torch.long).reshape(-1)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        kept.append((boxes[ok], labels[ok]))
    batch, most = len(targets), max((len(b) for b, _ in kept), default=0)
    gt_boxes = torch.zeros(batch, most, 4, device=device)
    gt_labels = torch.zeros(batch, most, dtype=torch.long, device=device)
    gt_mask = torch.zeros(batch, most, dtype=torch.bool, device=device)
    for index, (boxes, labels) in enumerate(kept):
        gt_boxes[index, :len(boxes)] = boxes
        gt_labels[index, :len(labels)] = labels
        gt_mask[index, :len(boxes)] = True
    return gt_boxes, gt_labels, gt_mask


def pairwise_iou(gt_boxes: torch.Tensor, pred_boxes: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """IoU of every gt box (B, M, 4) with every anchor's predicted box (B, A, 4) -> (B, M, A)."""
    gt, pred = gt_boxes[:, :, None, :], pred_boxes[:, None, :, :]  # (B, M, 1, 4), (B, 1, A, 4)
    wh = (torch.minimum(gt[..., 2:], pred[..., 2:]) - torch.maximum(gt[..., :2], pred[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]  # (B, M, A)
    area_gt = (gt[..., 2] - gt[..., 0]) * (gt[..., 3] - gt[..., 1])
    area_pred = (pred[..., 2] - pred[..., 0]).clamp(min=0) * (pred[..., 3] - pred[..., 1]).clamp(min=0)
    return inter / (area_gt + area_pred - inter + eps)


class TaskAlignedAssigner:
    """TOOD's task-aligned assigner with YOLOv8's defaults (topk 10, alpha 0.5, beta 6)."""

    def __init__(self, *, topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9) -> None:
        require(topk >= 1, "TaskAlignedAssigner", "topk", ">= 1", topk)
        self.topk, self.alpha, self.beta, self.eps = topk, alpha, beta, eps

    @torch.no_grad()
    def __call__(self, scores: torch.Tensor, pred_boxes: torch.Tensor, anchors: torch.Tensor,
                 gt_boxes: torch.Tensor, gt_labels: torch.Tensor, gt_mask: torch.Tensor) -> Assignment:
        """scores (B, A, C) probabilities, pred_boxes (B, A, 4) and anchors (A, 2) in pixels, padded gts."""
        batch, num_anchors, num_classes = scores.shape
        num_gt = gt_boxes.shape[1]
        if num_gt == 0:
            return Assignment(
                torch.zeros(batch, num_anchors, dtype=torch.bool, device=scores.device),
                torch.zeros(batch, num_anchors, dtype=torch.long, device=scores.device),
                torch.zeros(batch, num_anchors, 4, device=scores.device),
                torch.zeros(batch, num_anchors, dtype=torch.long, device=scores.device),
                torch.zeros_like(scores),
            )
        x, y = anchors[:, 0], anchors[:, 1]  # (A,) each
        x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))  # (B, M, 1) each
        inside = (x - x1 > self.eps) & (x2 - x > self.eps) & (y - y1 > self.eps) & (y2 - y > self.eps)
        candidate = inside & gt_mask[:, :, None]  # (B, M, A): anchor strictly inside a real gt box
        overlaps = pairwise_iou(gt_boxes, pred_boxes) * candidate  # (B, M, A)
        labels = gt_labels[:, None, :].expand(-1, num_anchors, -1)  # (B, A, M)
        class_scores = scores.gather(2, labels).transpose(1, 2)  # (B, M, A): p(gt's class) at each anchor
        align = class_scores.pow(self.alpha) * overlaps.pow(self.beta) * candidate  # (B, M, A)

        top = align.topk(min(self.topk, num_anchors), dim=-1).indices  # (B, M, k)
        positive = torch.zeros_like(candidate).scatter_(-1, top, True) & candidate  # (B, M, A)
        claimed = positive.sum(1, keepdim=True) > 1  # (B, 1, A): anchors picked by several gts
        best = F.one_hot(overlaps.argmax(1), num_gt).transpose(1, 2).bool()  # (B, M, A)
        positive = torch.where(claimed, best & candidate, positive)

        fg_mask = positive.any(1)  # (B, A)
        gt_index = positive.to(torch.uint8).argmax(1)  # (B, A)
        target_labels = gt_labels.gather(1, gt_index)  # (B, A)
        target_boxes = gt_boxes.gather(1, gt_index[..., None].expand(-1, -1, 4))  # (B, A, 4)

        align = align * positive
        max_align = align.amax(-1, keepdim=True)  # (B, M, 1)
        max_iou = (overlaps * positive).amax(-1, keepdim=True)  # (B, M, 1)
        quality = (align * max_iou / (max_align + self.eps)).amax(1)  # (B, A)
        target_scores = F.one_hot(target_labels, num_classes).to(scores.dtype)  # (B, A, C)
        target_scores = target_scores * (quality * fg_mask)[..., None]
        return Assignment(fg_mask, gt_index, target_boxes, target_labels, target_scores)


def dfl_loss(box_logits: torch.Tensor, target: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Distribution focal loss: (P, 4*reg_max) logits vs (P, 4) distances in stride units -> (P,) mean over sides."""
    target = target.clamp(0, reg_max - 1 - 0.01)
    left = target.floor().long()  # (P, 4)
    weight_left = left + 1 - target
    logits = box_logits.reshape(-1, reg_max)  # (P*4, reg_max)
    loss = (F.cross_entropy(logits, left.reshape(-1), reduction="none").view(left.shape) * weight_left
            + F.cross_entropy(logits, (left + 1).reshape(-1), reduction="none").view(left.shape) * (1 - weight_left))
    return loss.mean(-1)


class DetectionLoss(nn.Module):
    """Loss of the head's raw per-level maps against a batch's targets; returns its terms separately.

    Returns ``{"cls", "box", "dfl" (when reg_max > 1), "total"}``; the terms are unweighted, ``total``
    is their weighted sum (YOLOv8's weights 0.5 / 7.5 / 1.5). All are normalised by the sum of the
    soft class targets, so the loss does not scale with the number of boxes.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        strides: Sequence[int],
        reg_max: int = 16,
        cls_weight: float = 0.5,
        box_weight: float = 7.5,
        dfl_weight: float = 1.5,
        iou_loss: str = "ciou",
        topk: int = 10,
        alpha: float = 0.5,
        beta: float = 6.0,
    ) -> None:
        super().__init__()
        require(num_classes >= 1, "DetectionLoss", "num_classes", ">= 1", num_classes)
        require(iou_loss in IOU_LOSSES, "DetectionLoss", "iou_loss", f"one of {list(IOU_LOSSES)}", iou_loss)
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        self.weights = {"cls": cls_weight, "box": box_weight, "dfl": dfl_weight}
        self.iou_loss = IOU_LOSSES[iou_loss]
        self.assigner = TaskAlignedAssigner(topk=topk, alpha=alpha, beta=beta)

    def forward(self, raw: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]]
                ) -> dict[str, torch.Tensor]:
        if len(targets) != raw[0].shape[0]:
            raise BadValueError(f"DetectionLoss: {len(targets)} target dicts for a batch of {raw[0].shape[0]} images")
        flat = flatten_outputs([x.float() for x in raw], num_classes=self.num_classes, reg_max=self.reg_max,
                               strides=self.strides)
        distances = box_distances(flat.box_logits, self.reg_max)  # (B, A, 4)
        pred_boxes = decode_boxes(distances, flat.anchors, flat.strides)  # (B, A, 4) pixels
        gt_boxes, gt_labels, gt_mask = pad_targets(targets, device=pred_boxes.device)
        labels = gt_labels[gt_mask]
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise BadValueError(f"DetectionLoss: target labels must be in [0, {self.num_classes}), got "
                             f"{sorted(set(labels.tolist()))}")
        assigned = self.assigner(flat.cls_logits.detach().sigmoid(), pred_boxes.detach(), flat.anchors,
                                 gt_boxes, gt_labels, gt_mask)
        score_sum = assigned.target_scores.sum().clamp(min=1.0)
        losses = {"cls": F.binary_cross_entropy_with_logits(flat.cls_logits, assigned.target_scores,
                                                            reduction="sum") / score_sum}
        fg = assigned.fg_mask
        zero = pred_boxes.sum() * 0.0  # keeps the graph connected when there are no positives
        if fg.any():
            weight = assigned.target_scores.sum(-1)[fg]  # (P,)
            pred, target = pred_boxes[fg], assigned.target_boxes[fg]  # (P, 4) each
            pred = torch.cat([pred[:, :2], pred[:, :2] + (pred[:, 2:] - pred[:, :2]).clamp(min=1e-4)], dim=-1)
            losses["box"] = (self.iou_loss(pred, target, reduction="none") * weight).sum() / score_sum
        else:
            losses["box"] = zero
        if self.reg_max > 1:
            if fg.any():
                target_dist = encode_boxes(assigned.target_boxes, flat.anchors, flat.strides)[fg]  # (P, 4)
                losses["dfl"] = (dfl_loss(flat.box_logits[fg], target_dist, self.reg_max) * weight).sum() / score_sum
            else:
                losses["dfl"] = zero
        losses["total"] = sum(self.weights[name] * value for name, value in losses.items())
        return losses
