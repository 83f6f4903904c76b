"""Class-wise NMS with the semantics of ONNX ``NonMaxSuppression``, as a torch op that exports to that ONNX op.

``torchvision.ops.nms`` has no translation in torch's dynamo ONNX exporter (torchvision 0.29), so
exported detectors use ``visattn::nms_select``: eagerly it runs ``torchvision.ops.nms`` per image and
class; in ONNX it is one ``NonMaxSuppression`` node. Both return the selected (batch, class, box)
index triples ordered by batch, then class, then descending score.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor


@torch.library.custom_op("visattn::nms_select", mutates_args=())
def nms_select(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
               score_threshold: float) -> Tensor:
    """boxes (B, A, 4) xyxy, scores (B, C, A) -> selected (K, 3) int64 rows (batch, class, box index).

    Per image and class: boxes scoring above ``score_threshold`` go through NMS at ``iou_threshold``;
    at most ``max_per_class`` are kept.
    """
    rows = []
    for image in range(boxes.shape[0]):
        for cls in range(scores.shape[1]):
            class_scores = scores[image, cls]  # (A,)
            candidates = (class_scores > score_threshold).nonzero().squeeze(1)  # (n,)
            keep = torchvision.ops.nms(boxes[image, candidates], class_scores[candidates], iou_threshold)
            chosen = candidates[keep[:max_per_class]]  # (k,)
            rows.append(torch.stack([torch.full_like(chosen, image), torch.full_like(chosen, cls), chosen], dim=1))
    if not rows:
        return torch.zeros(0, 3, dtype=torch.int64, device=boxes.device)
    return torch.cat(rows).to(torch.int64)  # (K, 3)


@nms_select.register_fake
def _nms_select_fake(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                     score_threshold: float) -> Tensor:
    count = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty((count, 3), dtype=torch.int64)


def nms_select_onnx(boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):  # noqa: ANN001, ANN201
    """The ONNX translation of ``nms_select`` (for ``torch.onnx.export(custom_translation_table=...)``)."""
    from onnxscript import opset18 as op

    return op.NonMaxSuppression(
        boxes, scores,
        op.Constant(value_ints=[max_per_class]),
        op.Constant(value_floats=[iou_threshold]),
        op.Constant(value_floats=[score_threshold]),
        center_point_box=0,
    )


def onnx_translations() -> dict:
    """The custom translation table the ONNX export of a detector with NMS needs."""
    return {torch.ops.visattn.nms_select.default: nms_select_onnx}
