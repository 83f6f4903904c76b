"""Object detection: backbone (its ``forward_stages``) + neck + anchor-free head, built by name.

``Detector.forward`` returns the raw per-level maps in training mode and, in eval mode, one decoded
(B, A, 4 + num_classes) tensor (xyxy boxes in input pixels, then class probabilities); decoding is in
the graph, so an exported model gives the same tensor. NMS is separate: :func:`postprocess`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.ops import batched_nms

import visattn.necks  # noqa: F401  (declares the necks)
from visattn.backbones.base import Backbone
from visattn.errors import BadValueError
from visattn.heads.detect import DetectHead
from visattn.layers import AttentionSlot, require
from visattn.models.build import AttnSpec, build_model, fill_slots
from visattn.models.weights import load_pretrained, read_state_dict
from visattn.ops import nms_select
from visattn.registry import NECKS

__all__ = ["Detector", "DetectorWithNMS", "build_detector", "postprocess", "split_detections"]


class Detector(nn.Module):
    """``backbone`` -> ``neck`` -> ``head``. Slots: the backbone's (``backbone.input`` on the image,
    ``backbone.*``), the neck's (``neck.out_slots.*``, role "neck", the default for ``attn``; ``neck.*.slot``,
    role "csp"). ``classifier_name`` points at the head, so a detection file with another class count
    loads with the mismatched class convolutions left at init."""

    default_slot_role = "neck"
    classifier_name = "head"

    def __init__(self, backbone: Backbone, neck: nn.Module, head: DetectHead) -> None:
        super().__init__()
        if tuple(neck.strides) != tuple(head.strides):
            raise BadValueError(f"Detector: neck strides {tuple(neck.strides)} differ from head strides {head.strides}")
        self.backbone = backbone
        self.neck = neck
        self.head = head
        self.num_classes = head.num_classes
        self.strides = head.strides
        self.in_chans = backbone.input.channels

    @property
    def class_weight_key(self) -> str:
        """The state-dict key whose first dimension is the number of classes (the last class convolution)."""
        return f"head.cls_branches.0.{len(self.head.cls_branches[0]) - 1}.weight"

    @property
    def input(self) -> AttentionSlot:
        """The backbone's image slot (``backbone.input``)."""
        return self.backbone.input

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless the backbone takes the size and it is a multiple of the largest stride."""
        self.backbone.check_input_size(height, width)
        step = max(self.strides)
        if height % step or width % step:
            raise BadValueError(f"Detector: image size {height}x{width} is not supported; height and width must be "
                             f"multiples of the largest stride {step} (e.g. {max(step, height // step * step)})")

    def forward_raw(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) images -> per-level raw maps (B, 4*reg_max + num_classes, H/s, W/s)."""
        self.check_input_size(images.shape[-2], images.shape[-1])
        return self.head(self.neck(self.backbone.forward_stages(images)))

    def decode(self, raw: Sequence[torch.Tensor]) -> torch.Tensor:
        """Raw maps -> (B, A, 4 + num_classes): xyxy boxes in pixels, class probabilities."""
        return self.head.decode(raw)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        raw = self.forward_raw(images)
        return raw if self.training else self.decode(raw)

    def postprocess(self, decoded: torch.Tensor, *, conf_threshold: float = 0.25, iou_threshold: float = 0.6,
                    max_det: int = 100, multi_label: bool = False) -> list[dict[str, torch.Tensor]]:
        """See :func:`postprocess`."""
        return postprocess(decoded, conf_threshold=conf_threshold, iou_threshold=iou_threshold, max_det=max_det,
                           multi_label=multi_label)


def postprocess(
    decoded: torch.Tensor,
    *,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.6,
    max_det: int = 100,
    multi_label: bool = False,
    max_candidates: int = 10000,
) -> list[dict[str, torch.Tensor]]:
    """Decoded (B, A, 4 + C) -> per image {"boxes" (K, 4) xyxy, "scores" (K,), "labels" (K,)}, class-wise NMS.

    ``conf_threshold``: 0.25 for predictions to show, ~0.001 for mAP evaluation. ``multi_label``: every
    class above the threshold makes a candidate (better mAP), else only each anchor's best class.
    At most ``max_candidates`` highest-scoring candidates go into NMS and ``max_det`` come out.
    """
    require(decoded.ndim == 3 and decoded.shape[-1] > 4, "postprocess", "decoded", "a (B, A, 4 + C) tensor",
            tuple(decoded.shape))
    require(0.0 <= conf_threshold < 1.0, "postprocess", "conf_threshold", "in [0, 1)", conf_threshold)
    require(0.0 < iou_threshold <= 1.0, "postprocess", "iou_threshold", "in (0, 1]", iou_threshold)
    require(max_det >= 1, "postprocess", "max_det", ">= 1", max_det)
    require(max_candidates >= max_det, "postprocess", "max_candidates", f">= max_det ({max_det})", max_candidates)
    results = []
    for image in decoded.float():  # (A, 4 + C)
        boxes, scores = image[:, :4], image[:, 4:]
        if multi_label:
            anchor, labels = (scores > conf_threshold).nonzero(as_tuple=True)  # (K,), (K,)
            kept = scores[anchor, labels]
        else:
            kept, labels = scores.max(dim=1)  # (A,), (A,)
            anchor = (kept > conf_threshold).nonzero(as_tuple=True)[0]
            kept, labels = kept[anchor], labels[anchor]
        if kept.numel() > max_candidates:
            top = kept.topk(max_candidates).indices
            anchor, labels, kept = anchor[top], labels[top], kept[top]
        chosen = boxes[anchor]
        keep = batched_nms(chosen, kept, labels, iou_threshold)[:max_det]
        results.append({"boxes": chosen[keep], "scores": kept[keep], "labels": labels[keep]})
    return results


def freeze_unused(backbone: Backbone, img_size: int) -> list[str]:
    """Stop gradients for backbone parameters that ``forward_stages`` never uses (e.g. Swin's final norm).

    Without this, DDP without ``find_unused_parameters`` fails on them. Found with one eval-mode
    backward at ``img_size``; returns the frozen names.
    """
    params = [p for p in backbone.parameters() if p.requires_grad]
    if not params:
        return []
    was_training = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        image = torch.zeros(1, backbone.input.channels, img_size, img_size, device=params[0].device)
        with torch.enable_grad():  # also when built under no_grad (e.g. while exporting)
            outputs = backbone.forward_stages(image)
            grads = torch.autograd.grad(sum(x.sum() for x in outputs), params, allow_unused=True)
    finally:
        for module, training in was_training.items():
            module.training = training
    unused = {id(p) for p, g in zip(params, grads, strict=True) if g is None}
    frozen = []
    for name, param in backbone.named_parameters():
        if id(param) in unused:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def build_detector(
    backbone: str,
    *,
    attn: AttnSpec = None,
    num_classes: int,
    neck: str = "pan",
    scale: str = "n",
    img_size: int = 160,
    pretrained: str | Path | None = None,
    backbone_args: Mapping[str, Any] | None = None,
    reg_max: int = 16,
    attn_init: str | None = None,
) -> Detector:
    """Build a detector on the registered ``backbone`` (headless) with neck ``neck`` at ``scale``.

    ``attn`` (see :func:`visattn.fill_slots`) fills slots over the whole detector; a bare block name goes
    to the neck outputs (role "neck"); use ``at`` globs such as ``backbone.*`` or ``neck.*`` elsewhere.
    ``pretrained``: a local file; a classification file (or any backbone weights) loads into the backbone
    (its classifier ignored), a detection file (keys ``backbone.*``) into the whole detector.
    ``reg_max``: DFL bins per box side (1: plain softplus distances). ``attn_init``: see :func:`visattn.fill_slots`.
    """
    require(isinstance(num_classes, int) and num_classes >= 1, "build_detector", "num_classes", "an int >= 1",
            num_classes)
    require(isinstance(img_size, int) and img_size >= 32 and img_size % 32 == 0, "build_detector", "img_size",
            "a positive multiple of 32", img_size)
    if backbone_args and "num_classes" in backbone_args:
        raise BadValueError("build_detector: backbone_args must not set num_classes (the backbone is built headless; "
                         "pass num_classes to build_detector for the detection classes)")
    body = build_model(backbone, num_classes=0, img_size=img_size, backbone_args=backbone_args)
    neck_module = NECKS.build(neck, body.stage_info, scale=scale)
    head = DetectHead(neck_module.out_channels, neck_module.strides, num_classes=num_classes, reg_max=reg_max)
    detector = Detector(body, neck_module, head)
    detector.check_input_size(img_size, img_size)
    detector.frozen_unused = freeze_unused(body, img_size)
    fill_slots(detector, attn, default_role=Detector.default_slot_role, init=attn_init)
    if pretrained is not None:
        is_detector_file = any(key.startswith("backbone.") for key in read_state_dict(pretrained))
        detector.pretrained_report = load_pretrained(detector if is_detector_file else body, pretrained)
    return detector


class DetectorWithNMS(nn.Module):
    """An eval-mode detector plus class-wise NMS in the graph, for export.

    ``forward``: images (B, 3, S, S) -> ``decoded`` (B, A, 4 + C) as :meth:`Detector.forward` in eval
    mode, and ``detections`` (K, 7): rows ``batch, x0, y0, x1, y1, score, class`` ordered by image,
    class, then descending score, at most ``max_det`` per image and class. NMS runs as
    ``visattn::nms_select``, which exports to ONNX ``NonMaxSuppression``.
    """

    def __init__(self, detector: Detector, *, conf_threshold: float = 0.25, iou_threshold: float = 0.6,
                 max_det: int = 100) -> None:
        super().__init__()
        require(0.0 <= conf_threshold < 1.0, "DetectorWithNMS", "conf_threshold", "in [0, 1)", conf_threshold)
        require(0.0 < iou_threshold <= 1.0, "DetectorWithNMS", "iou_threshold", "in (0, 1]", iou_threshold)
        require(max_det >= 1, "DetectorWithNMS", "max_det", ">= 1", max_det)
        self.detector = detector.eval()
        self.conf_threshold, self.iou_threshold, self.max_det = conf_threshold, iou_threshold, max_det

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        decoded = self.detector.decode(self.detector.forward_raw(images))  # (B, A, 4 + C)
        return decoded, self.select(decoded)  # (B, A, 4 + C), (K, 7)

    def select(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoded (B, A, 4 + C) -> detections (K, 7) (the NMS half of ``forward``)."""
        boxes = decoded[..., :4]  # (B, A, 4)
        scores = decoded[..., 4:].transpose(1, 2).contiguous()  # (B, C, A)
        selected = nms_select(boxes, scores, self.max_det, self.iou_threshold, self.conf_threshold)  # (K, 3)
        image, cls, anchor = selected[:, 0], selected[:, 1], selected[:, 2]  # each (K,)
        return torch.cat([image[:, None].to(boxes.dtype), boxes[image, anchor],
                          scores[image, cls, anchor][:, None], cls[:, None].to(boxes.dtype)], dim=1)  # (K, 7)


def split_detections(detections: torch.Tensor, batch: int, *, max_det: int = 100) -> list[dict[str, torch.Tensor]]:
    """(K, 7) rows from :class:`DetectorWithNMS` -> per image {"boxes", "scores", "labels"}, best ``max_det``."""
    out = []
    for image in range(batch):
        rows = detections[detections[:, 0] == image]
        rows = rows[rows[:, 5].argsort(descending=True)][:max_det]
        out.append({"boxes": rows[:, 1:5], "scores": rows[:, 5], "labels": rows[:, 6].long()})
    return out
