"""``ClassificationDataModule``: any registered data set -> augmented, seeded Lightning data loaders."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from visattn.data.base import (
    SPLITS,
    ArrayDataset,
    DataError,
    DataSource,
    EpochSampler,
    check,
    check_dataset_options,
    check_module_args,
    nearest,
)
from visattn.data.folders import ImageFileDataset
from visattn.data.transforms import (
    AugmentConfig,
    build_eval_transform,
    build_train_transform,
    resolve_augment,
    seed_worker,
)
from visattn.registry import DATASETS, keyword_names

# Arguments of the data module that go to a data set's loader only when that loader declares them.
_SHARED = ("data_dir", "val_ratio", "test_ratio", "skip_bad_images", "verify_images")
PRE_RESIZE_BUDGET = 1 << 30  # bytes: in-memory sets are resized once to img_size when they fit in this


def available_cpus() -> int:
    """CPUs this process may run on (affinity-aware where the OS says)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_num_workers() -> int:
    """One worker per spare core, at most 2; 0 (load in the main process) on a single core.

    A worker runs single-threaded (torch sets 1 thread, ``seed_worker`` 1 cv2 thread) and is idle most
    of the time for the small in-memory sets, so it does not compete much with the training threads.
    """
    return max(0, min(2, available_cpus() - 1))


@dataclass(frozen=True)
class RawSamples:
    """Un-normalised samples for visualisation."""

    images: np.ndarray  # (n, S, S, 3) uint8, resized to the data module's img_size
    labels: np.ndarray  # (n,) int64
    boxes: np.ndarray | None  # (n, 4) float32 (x0, y0, x1, y1) in these images' pixels, or None
    class_names: list[str]


def image_files(paths: Sequence[Path], labels: np.ndarray, *, img_size: int,
                transform: Any = None, skip_bad: bool = False) -> ImageFileDataset:
    """Image files decoded as every split (and ``visattn predict``) decodes them: JPEGs DCT-downscaled while
    decoding to no less than 2 x ``img_size`` (PIL draft), then ``transform``; ``skip_bad``: see
    ``ImageFileDataset``."""
    return ImageFileDataset(paths, labels, transform, draft_size=2 * img_size, skip_bad=skip_bad)


EVAL_BATCH_FACTOR = 2  # validation/test batch = 2 x the training batch


def split_loader(dataset: Dataset, *, train: bool, batch_size: int, seed: int, num_workers: int,
                 collate_fn: Callable | None = None) -> DataLoader:
    """The loader of one split: training shuffles through ``EpochSampler`` (per-sample seeds from seed and epoch)
    and drops a last batch of one sample (BatchNorm); workers are seeded by ``seed_worker``. Validation and test
    batches are ``EVAL_BATCH_FACTOR`` x larger: without gradients they need far less memory, and fewer, larger
    batches cost less per image."""
    return DataLoader(
        dataset,
        batch_size=batch_size if train else EVAL_BATCH_FACTOR * batch_size,
        sampler=EpochSampler(len(dataset), seed=seed) if train else None,
        drop_last=train and len(dataset) > batch_size,
        collate_fn=collate_fn,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker if num_workers > 0 else None,
    )


class ClassificationDataModule(L.LightningDataModule):
    """Train/val/test loaders for a registered data set (see ``list_datasets()``).

    ``data_dir``, ``val_ratio``, ``test_ratio`` and ``skip_bad_images`` apply to the data sets that
    take them (an explicit value for one that does not raises); ``dataset_options`` are the data set's
    own options (e.g. ``{"n_train": 2000}`` for cluttered-digits). ``limit`` keeps the first N samples
    of every split. ``num_workers=None`` picks ``default_num_workers()``.
    """

    def __init__(
        self,
        *,
        name: str,
        data_dir: str | os.PathLike[str] | None = None,
        img_size: int = 32,
        batch_size: int = 64,
        num_workers: int | None = None,
        seed: int = 0,
        augment: AugmentConfig | Mapping[str, Any] | None = None,
        skip_bad_images: bool = False,
        limit: int | None = None,
        val_ratio: float | None = None,
        test_ratio: float | None = None,
        dataset_options: Mapping[str, Any] | None = None,
        verify_images: str = "quick",
    ) -> None:
        super().__init__()
        try:
            self._loader_fn = DATASETS.get(name)
        except (KeyError, TypeError) as err:
            raise DataError(str(err.args[0])) from None
        owner = "ClassificationDataModule"
        check_module_args(owner, img_size=img_size, min_img_size=8, batch_size=batch_size, num_workers=num_workers,
                          seed=seed, skip_bad_images=skip_bad_images, limit=limit)
        accepted = keyword_names(self._loader_fn)
        shared = {"data_dir": data_dir, "val_ratio": val_ratio, "test_ratio": test_ratio}
        shared["skip_bad_images"] = skip_bad_images or None
        check(verify_images in ("quick", "full"), owner, "verify_images", "'quick' or 'full'", verify_images)
        if "verify_images" in accepted:  # in-memory data sets have no files to scan: nothing to verify there
            shared["verify_images"] = verify_images
        for arg, value in shared.items():
            if value is not None and arg not in accepted:
                takes = [a for a in _SHARED if a in accepted]
                raise DataError(
                    f"data set {name!r} does not use {arg} (got {value!r}); it takes "
                    f"{', '.join(takes) or 'none of data_dir, val_ratio, test_ratio, skip_bad_images'}."
                )
        options = check_dataset_options(name, self._loader_fn, dataset_options, shared=_SHARED)
        self._loader_kwargs = {**{k: v for k, v in shared.items() if v is not None}, **options}

        self.name = name
        self.img_size = img_size
        self.batch_size = batch_size
        self.num_workers = default_num_workers() if num_workers is None else num_workers
        self.seed = seed
        self.augment = resolve_augment(augment)
        self.limit = limit
        self.skip_bad_images = skip_bad_images
        self._source: DataSource | None = None
        self._datasets: dict[str, Dataset] = {}

    # ---------------------------------------------------------------- loading
    def _load(self) -> DataSource:
        if self._source is None:
            source = self._loader_fn(**self._loader_kwargs)
            if source.skipped:
                warnings.warn(
                    f"data set {self.name!r}: skipped {len(source.skipped)} undecodable image file(s), "
                    f"e.g. {source.skipped[0]}.",
                    stacklevel=2,
                )
            self._source = source
        return self._source

    def setup(self, stage: str | None = None) -> None:
        """Load (once), pre-resize in-memory sets to ``img_size`` and attach the transforms."""
        if self._datasets:
            return
        source = self._load()
        size, cfg = self.img_size, self.augment
        arrays = [d for d in source.splits.values() if isinstance(d, ArrayDataset)]
        resized_bytes = sum(len(d) * size * size * (1 if d.images.ndim == 3 else 3) for d in arrays)
        train_tf = build_train_transform(
            cfg, img_size=size, hflip_default=source.hflip, scale_min_default=source.scale_min, seed=self.seed
        )
        eval_tf = build_eval_transform(img_size=size, mean=cfg.mean, std=cfg.std)
        for split in SPLITS:
            ds = source.splits[split]
            if isinstance(ds, ArrayDataset) and resized_bytes <= PRE_RESIZE_BUDGET:
                ds = ds.subset(self.limit).resized(size)  # once, so per-sample work stays minimal
            elif isinstance(ds, ImageFileDataset):
                ds = image_files(ds.paths, ds.labels, img_size=size, skip_bad=self.skip_bad_images).subset(self.limit)
            else:
                ds = ds.subset(self.limit)
            self._datasets[split] = ds.with_transform(train_tf if split == "train" else eval_tf)

    def dataset(self, split: str) -> Dataset:
        """The transformed data set of ``split`` ("train", "val" or "test")."""
        if split not in SPLITS:
            hint = nearest(str(split), SPLITS)
            raise DataError(f"unknown split {split!r}.{hint} Valid splits: train, val, test.")
        self.setup()
        return self._datasets[split]

    @property
    def num_classes(self) -> int:
        return len(self._load().class_names)

    @property
    def class_names(self) -> list[str]:
        return list(self._load().class_names)

    @property
    def in_chans(self) -> int:
        return self._load().in_chans

    @property
    def skipped_images(self) -> int:
        """How many undecodable files were left out (``skip_bad_images=True``): by the up-front scan, and while
        loading (images the scan passed that then failed to decode)."""
        later = sum(getattr(d, "bad_count", 0) for d in self._datasets.values())
        return len(self._load().skipped) + later

    # ------------------------------------------------------------ dataloaders
    def _dataloader(self, split: str) -> DataLoader:
        return split_loader(self.dataset(split), train=split == "train", batch_size=self.batch_size, seed=self.seed,
                            num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._dataloader("train")

    def val_dataloader(self) -> DataLoader:
        return self._dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._dataloader("test")

    # ---------------------------------------------------------- visualisation
    def raw_samples(self, split: str, n: int) -> RawSamples:
        """The first ``n`` samples of ``split`` as uint8 (n, img_size, img_size, 3), labels and boxes."""
        check(isinstance(n, int) and n >= 1, "raw_samples", "n", "an int >= 1", n)
        ds = self.dataset(split)
        n = min(n, len(ds))
        size = self.img_size
        images = np.zeros((n, size, size, 3), np.uint8)
        boxes = None if ds.boxes is None else np.array(ds.boxes[:n], np.float32)  # (n, 4)
        for i in range(n):
            img = ds.raw(i)  # (H, W, 3)
            h, w = img.shape[:2]
            if (h, w) != (size, size):
                interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
                img = cv2.resize(img, (size, size), interpolation=interp)
                if boxes is not None:
                    boxes[i] *= np.array([size / w, size / h, size / w, size / h], np.float32)
            images[i] = img
        labels = np.asarray(ds.labels[:n], np.int64)
        return RawSamples(images=images, labels=labels, boxes=boxes, class_names=self.class_names)
