"""Albumentations 2.x detection pipelines: letterbox for eval; mosaic, letterbox, scale jitter, flips, colour for train.

Pipelines take and return uint8 HWC images with ``bboxes`` (pascal_voc: x0, y0, x1, y1 pixels) and
``labels``; normalisation happens batched in the collate function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np

from visattn.data.base import DataError, check, check_options

PAD_VALUE = 114  # letterbox / border grey, as in the YOLO family
MIN_BOX_AREA = 4.0  # px^2 at the network input: smaller boxes left by a transform are dropped
_OWNER = "augment"


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class DetectAugmentConfig:
    """Train-time detection augmentation; probabilities and strengths, 0 disables each."""

    enabled: bool = True  # False: train with the eval (letterbox only) transform
    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.0  # probability of a vertical flip
    scale: float = 0.25  # zoom factor drawn from [1 - scale, 1 + scale]
    translate: float = 0.1  # shift up to this fraction of the image, each axis
    color_jitter: float = 0.3  # brightness/contrast/saturation strength (hue a quarter of it), p = 0.8
    mosaic: float = 0.0  # probability of a 2 x 2 mosaic with three other training images
    min_visibility: float = 0.25  # boxes with less of their area left inside the image are dropped

    def __post_init__(self) -> None:
        check(isinstance(self.enabled, bool), _OWNER, "enabled", "a bool", self.enabled)
        limits = {"hflip": 1.0, "vflip": 1.0, "scale": 0.9, "translate": 0.5, "color_jitter": 1.0, "mosaic": 1.0,
                  "min_visibility": 1.0}
        for arg, top in limits.items():
            value = getattr(self, arg)
            check(_is_number(value) and 0.0 <= value <= top, _OWNER, arg, f"a number in [0, {top:g}]", value)
            object.__setattr__(self, arg, float(value))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> DetectAugmentConfig:
        """Build from a config mapping; an unknown key raises ``DataError`` naming the nearest valid key."""
        if values is None:
            return cls()
        if isinstance(values, DetectAugmentConfig):
            return values
        if not isinstance(values, Mapping):
            raise DataError(f"{_OWNER}: expected a mapping of options, got {type(values).__name__}.")
        check_options(_OWNER, values, [f.name for f in dataclasses.fields(cls)])
        return cls(**values)


def letterbox_ops(size: int) -> list[A.BasicTransform]:
    """Resize the longest side to ``size`` (area interpolation down, linear up), pad centred to ``size`` square."""
    return [
        A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_LINEAR, area_for_downscale="image"),
        A.PadIfNeeded(min_height=size, min_width=size, position="center", border_mode=cv2.BORDER_CONSTANT,
                      fill=PAD_VALUE),
    ]


def letterbox_params(*, width: int, height: int, size: int) -> tuple[float, float, int, int]:
    """(x scale, y scale, left pad, top pad) that ``letterbox_ops(size)`` applies to a ``width`` x ``height`` image."""
    scale = size / max(width, height)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    return new_w / width, new_h / height, (size - new_w) // 2, (size - new_h) // 2


def unletterbox(boxes: np.ndarray, *, width: int, height: int, size: int) -> np.ndarray:
    """Boxes (N, 4) xyxy in the ``size`` x ``size`` network input -> pixels of the original image (clipped)."""
    sx, sy, px, py = letterbox_params(width=width, height=height, size=size)
    out = (np.asarray(boxes, np.float32) - np.array([px, py, px, py], np.float32)) / np.array([sx, sy, sx, sy],
                                                                                              np.float32)
    return np.clip(out, 0, np.array([width, height, width, height], np.float32))


def _bbox_params(min_visibility: float) -> A.BboxParams:
    # boxes are clipped and filtered once, after the last transform (same result, ~20 % faster on small images)
    return A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, min_area=MIN_BOX_AREA,
                        min_visibility=min_visibility, min_width=1.0, min_height=1.0, filter_invalid_bboxes=True,
                        check_each_transform=False)


def build_detect_eval_transform(*, img_size: int) -> A.Compose:
    """Letterbox only (deterministic)."""
    return A.Compose(letterbox_ops(img_size), bbox_params=_bbox_params(0.0))


def letterbox(image: np.ndarray, boxes: np.ndarray, *, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``letterbox_ops`` in plain numpy/cv2: (H, W, 3) -> (size, size, 3), boxes (N, 4) moved along."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image, boxes
    sx, sy, px, py = letterbox_params(width=w, height=h, size=size)
    new_w, new_h = max(1, round(w * sx)), max(1, round(h * sy))
    out = np.full((size, size, 3), PAD_VALUE, np.uint8)
    interp = cv2.INTER_AREA if new_w < w else cv2.INTER_LINEAR
    out[py : py + new_h, px : px + new_w] = cv2.resize(image, (new_w, new_h), interpolation=interp)
    return out, boxes * np.array([sx, sy, sx, sy], np.float32) + np.array([px, py, px, py], np.float32)


def mosaic4(items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], *, size: int, rng: np.random.Generator,
            min_visibility: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YOLO-style mosaic: four letterboxed images tiled 2 x 2, a ``size`` square window cut around a random centre.

    ``items`` are four (image (H, W, 3) uint8, boxes (N, 4) xyxy, labels (N,)); boxes left with less than
    ``min_visibility`` of their area (or thinner than 1 px) are dropped. (Faster than ``A.Mosaic``,
    which builds sub-pipelines per call.)
    """
    canvas = np.full((2 * size, 2 * size, 3), PAD_VALUE, np.uint8)
    boxes_all, labels_all = [], []
    for k, (image, boxes, labels) in enumerate(items):
        tile, boxes = letterbox(image, np.asarray(boxes, np.float32).reshape(-1, 4), size=size)
        oy, ox = (k // 2) * size, (k % 2) * size
        canvas[oy : oy + size, ox : ox + size] = tile
        boxes_all.append(boxes + np.array([ox, oy, ox, oy], np.float32))
        labels_all.append(np.asarray(labels, np.int64).reshape(-1))
    x0, y0 = (np.round(rng.uniform(0.6, 1.4, size=2) * size - size / 2)).astype(int)  # window's top-left
    boxes = np.concatenate(boxes_all) - np.array([x0, y0, x0, y0], np.float32)  # (N, 4) window pixels
    clipped = np.clip(boxes, 0, size)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    kept_area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = ((clipped[:, 2:] - clipped[:, :2]).min(axis=1) >= 1.0) & (kept_area >= min_visibility * area)
    return canvas[y0 : y0 + size, x0 : x0 + size].copy(), clipped[keep], np.concatenate(labels_all)[keep]


def build_detect_train_transform(config: DetectAugmentConfig, *, img_size: int, seed: int,
                                 letterbox: bool = True) -> A.Compose:
    """Letterbox, Affine scale/translate jitter, flips, colour jitter (boxes kept in step).

    ``letterbox=False`` leaves the letterbox out, for data whose images are all ``img_size`` square already.
    Mosaic (``mosaic4``) is applied before this pipeline by the data set.
    """
    if not config.enabled:
        return build_detect_eval_transform(img_size=img_size)
    ops: list[Any] = []
    if letterbox:
        ops += letterbox_ops(img_size)
    if config.scale > 0 or config.translate > 0:
        ops.append(A.Affine(scale=(1 - config.scale, 1 + config.scale), keep_ratio=True,
                            translate_percent=(-config.translate, config.translate), rotate=0.0,
                            border_mode=cv2.BORDER_CONSTANT, fill=PAD_VALUE, p=1.0))
    if config.hflip > 0:
        ops.append(A.HorizontalFlip(p=config.hflip))
    if config.vflip > 0:
        ops.append(A.VerticalFlip(p=config.vflip))
    if config.color_jitter > 0:
        cj = config.color_jitter
        ops.append(A.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=cj / 4, p=0.8))
    return A.Compose(ops, bbox_params=_bbox_params(config.min_visibility), seed=seed)
