"""``DetectionDataset`` (records -> augmented uint8 samples) and ``detection_collate`` (-> normalised batches)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from visattn.data.base import IMAGENET_MEAN, IMAGENET_STD, DataError, reseed
from visattn.data.detect.readers import DetectionRecord, decode_image
from visattn.data.detect.transforms import mosaic4


class DetectionDataset(Dataset):
    """Records -> ``(uint8 (S, S, 3) image, target dict)`` through an albumentations pipeline.

    With ``cache=True`` every image is decoded once, shrunk so its longest side is at most ``size``
    (boxes scaled to match) and kept in memory. Keys are an index or ``(index, seed)`` from
    ``EpochSampler``; a seed makes the augmentation (and the mosaic partners) of that sample fixed.
    """

    def __init__(self, records: Sequence[DetectionRecord], *, transform: Any, size: int, cache: bool,
                 mosaic: float = 0.0, min_visibility: float = 0.0) -> None:
        self.records, self.transform, self.size = list(records), transform, size
        self.mosaic, self.min_visibility = mosaic, min_visibility
        self.images: list[np.ndarray] | None = None
        self.boxes = [r.boxes for r in self.records]
        if cache:
            self.images = []
            for k, rec in enumerate(self.records):
                img = self._decode(rec)
                scale = size / max(rec.width, rec.height)
                if scale < 1:
                    new = (max(1, round(rec.width * scale)), max(1, round(rec.height * scale)))
                    img = cv2.resize(img, new, interpolation=cv2.INTER_AREA)
                    self.boxes[k] = rec.boxes * np.array([new[0] / rec.width, new[1] / rec.height] * 2, np.float32)
                self.images.append(img)

    @staticmethod
    def _decode(rec: DetectionRecord) -> np.ndarray:
        img = decode_image(rec.path)
        if img is None:
            raise DataError(f"cannot decode image file {rec.path} (--skip-bad-images, config skip_bad_images: true, "
                            "leaves such files out).")
        if img.shape[:2] != (rec.height, rec.width):
            raise DataError(f"image file {rec.path} is {img.shape[1]}x{img.shape[0]} but its annotations say "
                            f"{rec.width}x{rec.height}.")
        return img

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Image uint8 (H, W, 3), boxes float32 (N, 4) in its pixels, labels int64 (N,), before any transform."""
        img = self.images[index] if self.images is not None else self._decode(self.records[index])
        return img, self.boxes[index], self.records[index].labels

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[np.ndarray, dict[str, Any]]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        rng = np.random.default_rng(seed)
        if self.mosaic > 0 and rng.random() < self.mosaic:
            partners = [index, *rng.integers(0, len(self), size=3).tolist()]
            img, boxes, labels = mosaic4([self.load(j) for j in partners], size=self.size, rng=rng,
                                         min_visibility=self.min_visibility)
        else:
            img, boxes, labels = self.load(index)
        if seed is not None:
            reseed(self.transform, seed)
        out = self.transform(image=img, bboxes=boxes, labels=labels)
        target = {
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], np.float32).reshape(-1, 4)),  # (N, 4)
            "labels": torch.as_tensor(np.asarray(out["labels"], np.int64).reshape(-1)),  # (N,)
            "image_id": int(self.records[index].image_id),
        }
        return out["image"], target


_MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
_STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255


def detection_collate(batch: Sequence[tuple[np.ndarray, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack uint8 HWC images into normalised float32 (B, 3, S, S); targets stay a list."""
    images = torch.from_numpy(np.stack([b[0] for b in batch]))  # (B, S, S, 3) uint8
    images = images.permute(0, 3, 1, 2).contiguous().float()  # (B, 3, S, S): reorder as bytes, then convert
    return images.sub_(_MEAN).div_(_STD), [b[1] for b in batch]
