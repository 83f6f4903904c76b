"""``DetectionDataModule``: shapes / COCO / YOLO data -> letterboxed, augmented, seeded detection batches.

A batch is ``(images, targets)``: ``images`` float32 (B, 3, S, S) normalised with ImageNet mean/std,
``targets`` a list of B dicts ``{"boxes": float32 (N, 4) x0, y0, x1, y1 in pixels of the S x S input,
"labels": int64 (N,) in 0..K-1, "image_id": int}``; N may be 0.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from visattn.data.base import SPLITS, DataError, check, check_dataset_options, check_module_args, nearest
from visattn.data.datamodule import default_num_workers, split_loader
from visattn.data.detect.dataset import DetectionDataset, detection_collate
from visattn.data.detect.readers import DetectionRecord, DetectionSource, decode_image, read_coco, read_yolo
from visattn.data.detect.shapes import ShapesParams, ensure_shapes
from visattn.data.detect.transforms import (
    DetectAugmentConfig,
    build_detect_eval_transform,
    build_detect_train_transform,
)
from visattn.registry import DETECTION_DATASETS, keyword_names

CACHE_BUDGET = 1 << 30  # bytes: splits whose letterboxed images fit are decoded once and kept in memory
_SHARED = ("data_dir", "skip_bad_images", "img_size")  # module arguments a loader may take


@DETECTION_DATASETS.register("shapes")
def load_shapes(*, data_dir: str | None = None, img_size: int = 160, skip_bad_images: bool = False,
                num_train: int | None = None, num_val: int | None = None, num_test: int | None = None,
                generation_seed: int | None = None, shapes_size: int | None = None,
                cache_dir: str | None = None) -> DetectionSource:
    """The built-in set (generated once, then reused); images are ``shapes_size`` (default: img_size) square."""
    if data_dir is not None and cache_dir is not None:
        raise DataError("shapes: give data_dir (the data set folder) or cache_dir (its parent), not both.")
    defaults = ShapesParams()
    params = ShapesParams(
        num_train=defaults.num_train if num_train is None else num_train,
        num_val=defaults.num_val if num_val is None else num_val,
        num_test=defaults.num_test if num_test is None else num_test,
        image_size=min(max(img_size, 64), 1024) if shapes_size is None else shapes_size,
        generation_seed=defaults.generation_seed if generation_seed is None else generation_seed,
    )
    root = ensure_shapes(params, data_dir=data_dir, cache_dir=cache_dir)
    return read_coco(root, skip_bad_images=skip_bad_images, name="shapes")


@DETECTION_DATASETS.register("coco")
def load_coco(*, data_dir: str | None = None, skip_bad_images: bool = False) -> DetectionSource:
    return read_coco(data_dir, skip_bad_images=skip_bad_images)


@DETECTION_DATASETS.register("yolo")
def load_yolo(*, data_dir: str | None = None, skip_bad_images: bool = False) -> DetectionSource:
    return read_yolo(data_dir, skip_bad_images=skip_bad_images)


@dataclass(frozen=True)
class DetectionSamples:
    """Un-normalised letterboxed samples for drawing."""

    images: np.ndarray  # (n, S, S, 3) uint8
    boxes: list[np.ndarray]  # n x (N_i, 4) float32 xyxy in these images' pixels
    labels: list[np.ndarray]  # n x (N_i,) int64
    image_ids: list[int]
    class_names: list[str]


class DetectionDataModule(L.LightningDataModule):
    """Train/val/test detection loaders for ``shapes`` (built in), ``coco`` or ``yolo`` data.

    ``dataset_options`` are the data set's own options, as for ``ClassificationDataModule`` (``shapes``:
    ``num_train``, ``num_val``, ``num_test``, ``generation_seed``, ``shapes_size``, ``cache_dir``).
    ``cache_images=None`` keeps decoded images in memory when a split fits in ``CACHE_BUDGET``. ``limit`` keeps
    the first N images of every split.
    """

    def __init__(
        self,
        *,
        name: str,
        data_dir: str | None = None,
        img_size: int = 160,
        batch_size: int = 16,
        num_workers: int | None = None,
        seed: int = 0,
        augment: dict | None = None,
        limit: int | None = None,
        skip_bad_images: bool = False,
        cache_images: bool | None = None,
        dataset_options: Mapping[str, Any] | None = None,
        verify_images: str = "quick",
    ) -> None:
        super().__init__()
        try:
            self._loader_fn = DETECTION_DATASETS.get(name)
        except (KeyError, TypeError) as err:
            raise DataError(str(err.args[0])) from None
        owner = "DetectionDataModule"
        check_module_args(owner, img_size=img_size, min_img_size=32, batch_size=batch_size, num_workers=num_workers,
                          seed=seed, skip_bad_images=skip_bad_images, limit=limit)
        ok = cache_images is None or isinstance(cache_images, bool)
        check(ok, owner, "cache_images", "None (automatic) or a bool", cache_images)
        check(verify_images in ("quick", "full"), owner, "verify_images", "'quick' or 'full'", verify_images)
        ok = data_dir is None or isinstance(data_dir, (str, os.PathLike))
        check(ok, owner, "data_dir", "None or a path", data_dir)
        accepted = keyword_names(self._loader_fn)
        self._loader_kwargs = check_dataset_options(name, self._loader_fn, dataset_options, shared=_SHARED)
        self._loader_kwargs.update({k: v for k, v in {"data_dir": data_dir, "skip_bad_images": skip_bad_images,
                                                      "img_size": img_size}.items() if k in accepted})
        self.name, self.img_size, self.batch_size, self.seed, self.limit = name, img_size, batch_size, seed, limit
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.augment = DetectAugmentConfig.from_dict(augment)
        self.cache_images = cache_images
        self.skip_bad_images = skip_bad_images
        self.verify_images = verify_images
        self._source: DetectionSource | None = None
        self._datasets: dict[str, DetectionDataset] = {}
        self._undecodable: list[Path] = []
        self._warned_skipped = False
        self._warned_test_is_val = False

    # ---------------------------------------------------------------- loading
    def _load(self) -> DetectionSource:
        if self._source is None:
            self._source = self._loader_fn(**self._loader_kwargs)
        return self._source

    def _records(self, split: str) -> tuple[list[DetectionRecord], bool]:
        """The split's records (bad images left out with ``skip_bad_images``) and whether to cache them."""
        splits = self._load().splits
        records = splits[split][: self.limit]
        cache = self.cache_images
        if cache is None:  # all three splits together must fit
            total = sum(len(splits[s][: self.limit]) for s in SPLITS)
            cache = total * self.img_size**2 * 3 <= CACHE_BUDGET
        if self.skip_bad_images or self.verify_images == "full":  # decode every image now: the loaders must not
            good = []                                                # meet a bad one mid-epoch
            for rec in records:
                img = decode_image(rec.path)
                if img is None or img.shape[:2] != (rec.height, rec.width):
                    if not self.skip_bad_images:
                        what = "cannot be decoded" if img is None else (
                            f"is {img.shape[1]}x{img.shape[0]} but annotated as {rec.width}x{rec.height}")
                        raise DataError(f"data set {self.name!r}: image file {rec.path} {what} (found by "
                                        "--verify-images full); remove or fix it, or pass --skip-bad-images to "
                                        "leave such files out.")
                    self._undecodable.append(rec.path)
                else:
                    good.append(rec)
            if len(good) < len(records):
                warnings.warn(f"data set {self.name!r}: skipped {len(records) - len(good)} undecodable image "
                              f"file(s) (or of another size than annotated) in split {split!r}, "
                              f"e.g. {self._undecodable[-1]}.", stacklevel=3)
            records = good
        return records, cache

    def setup(self, stage: str | None = None) -> None:
        """Read the annotations (once); build the splits a stage needs (all of them for ``None``)."""
        source = self._load()
        if source.skipped and not self._warned_skipped:
            self._warned_skipped = True
            warnings.warn(f"data set {self.name!r}: skipped {len(source.skipped)} missing or unreadable image "
                          f"file(s), e.g. {source.skipped[0]}.", stacklevel=2)
        if self.test_is_val and not self._warned_test_is_val:
            self._warned_test_is_val = True
            warnings.warn(f"data set {self.name!r} has no test split: the val split stands in for it, so test "
                          "metrics are measured on the split that chose the best checkpoint (optimistic); "
                          "metrics.json records test_is_val: true.", stacklevel=2)
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in needed.get(stage or "", SPLITS):
            self.dataset(split)

    def dataset(self, split: str) -> DetectionDataset:
        """The transformed data set of ``split`` ("train", "val" or "test"), built on first use."""
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}.{nearest(str(split), SPLITS)} Valid splits: train, val, test.")
        if split not in self._datasets:
            records, cache = self._records(split)
            if not records:
                raise DataError(f"data set {self.name!r}: split {split!r} has no images.")
            size, cfg = self.img_size, self.augment
            if split == "train" and cfg.enabled:
                letterbox = any((r.width, r.height) != (size, size) for r in records)
                tf = build_detect_train_transform(cfg, img_size=size, seed=self.seed, letterbox=letterbox)
                ds = DetectionDataset(records, transform=tf, size=size, cache=cache, mosaic=cfg.mosaic,
                                      min_visibility=cfg.min_visibility)
            else:
                ds = DetectionDataset(records, transform=build_detect_eval_transform(img_size=size), size=size,
                                      cache=cache)
            self._datasets[split] = ds
        return self._datasets[split]

    @property
    def num_classes(self) -> int:
        return len(self._load().class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._load().class_names)

    @property
    def in_chans(self) -> int:
        return 3

    @property
    def test_is_val(self) -> bool:
        """True when the data set has no test split and its val split stands in for it."""
        splits = self._load().splits
        return splits["test"] is splits["val"]

    @property
    def skipped_images(self) -> int:
        """Missing or undecodable images left out (``skip_bad_images=True``)."""
        return len(self._load().skipped) + len(self._undecodable)

    @property
    def dropped_boxes(self) -> int:
        return self._load().dropped_boxes

    @property
    def clipped_boxes(self) -> int:
        return self._load().clipped_boxes

    # ------------------------------------------------------------ dataloaders
    def _dataloader(self, split: str) -> DataLoader:
        ds = self.dataset(split)
        train, workers = split == "train", self.num_workers
        if workers > 0:
            # A forked worker that touches OpenCV's thread pool (seed_worker's cv2.setNumThreads(1)) deadlocks
            # when the parent has used that pool; with one cv2 thread in the parent there is no pool to inherit.
            cv2.setNumThreads(1)
        return split_loader(ds, train=train, batch_size=self.batch_size, seed=self.seed, num_workers=workers,
                            collate_fn=detection_collate)

    def train_dataloader(self) -> DataLoader:
        return self._dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self._dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._dataloader("test")

    # ---------------------------------------------------------- visualisation
    def raw_samples(self, split: str, n: int) -> DetectionSamples:
        """The first ``n`` images of ``split`` letterboxed to ``img_size`` (no augmentation, not normalised)."""
        check(isinstance(n, int) and not isinstance(n, bool) and n >= 1, "raw_samples", "n", "an int >= 1", n)
        ds = self.dataset(split)
        tf = build_detect_eval_transform(img_size=self.img_size)
        images, boxes, labels, ids = [], [], [], []
        for i in range(min(n, len(ds))):
            img, b, lab = ds.load(i)
            out = tf(image=img, bboxes=b, labels=lab)
            images.append(out["image"])
            boxes.append(np.asarray(out["bboxes"], np.float32).reshape(-1, 4))
            labels.append(np.asarray(out["labels"], np.int64).reshape(-1))
            ids.append(ds.records[i].image_id)
        return DetectionSamples(np.stack(images), boxes, labels, ids, self.class_names)


__all__ = ["DetectionDataModule", "DetectionDataset", "DetectionSamples", "detection_collate"]
