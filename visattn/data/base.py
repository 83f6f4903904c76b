"""Shared pieces of the data layer: the error class, split helpers, in-memory data set, vectorised resize."""

from __future__ import annotations

import difflib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from visattn.errors import DataError
from visattn.layers.helpers import require
from visattn.registry import keyword_names

SPLITS: tuple[str, ...] = ("train", "val", "test")
# Fixed seed of every built-in split, independent of the training seed: the test set never moves.
SPLIT_SEED = 20_240_917
# The normalisation of ImageNet-trained weights: every pipeline's default, and an export's when its run set none.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# Image files visattn reads from a folder (image folders, YOLO images, predict, visualize --images).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})
Transform = Callable[..., dict[str, Any]]  # an albumentations Compose: transform(image=hwc_uint8)["image"]
# PIL modes that cannot be mapped to 8 bits without guessing a range (see ``pil_to_rgb``).
UNSUPPORTED_MODES = {"I": "32-bit integer", "F": "32-bit float"}
# What PIL raises for a file it cannot open or decode (DecompressionBombError: over Image.MAX_IMAGE_PIXELS).
DECODE_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def check(ok: bool, owner: str, arg: str, allowed: str, value: object) -> None:
    """``visattn.layers.require`` that raises ``DataError``."""
    try:
        require(ok, owner, arg, allowed, value)
    except ValueError as err:
        raise DataError(str(err)) from None


def check_module_args(owner: str, *, img_size: object, min_img_size: int, batch_size: object, num_workers: object,
                      seed: object, skip_bad_images: object, limit: object) -> None:
    """The arguments both tasks' data modules take, checked alike."""

    def is_int(x: object) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    ok = is_int(img_size) and min_img_size <= img_size <= 4096
    check(ok, owner, "img_size", f"an int in {min_img_size}..4096", img_size)
    check(is_int(batch_size) and batch_size >= 1, owner, "batch_size", "an int >= 1", batch_size)
    ok = num_workers is None or (is_int(num_workers) and num_workers >= 0)
    check(ok, owner, "num_workers", "None (automatic) or an int >= 0", num_workers)
    check(is_int(seed) and seed >= 0, owner, "seed", "an int >= 0", seed)
    check(isinstance(skip_bad_images, bool), owner, "skip_bad_images", "a bool", skip_bad_images)
    check(limit is None or (is_int(limit) and limit >= 1), owner, "limit", "None or an int >= 1", limit)


def nearest(name: str, choices: Sequence[str]) -> str:
    """`` Did you mean 'x'?`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_options(owner: str, options: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """Reject unknown option keys, naming the nearest valid one and listing all of them."""
    for key in options:
        if key not in allowed:
            raise DataError(
                f"{owner}: unknown option {key!r}.{nearest(str(key), allowed)} "
                f"Valid options: {', '.join(allowed) or '(none)'}."
            )


def check_dataset_options(name: str, loader: Callable[..., Any], options: Mapping[str, Any] | None, *,
                          shared: Sequence[str]) -> dict[str, Any]:
    """A data set's own options (both data modules' ``dataset_options``, a config's ``data_args``): keywords of its
    loader other than the ``shared`` ones the data module passes itself. An unknown one names the valid ones."""
    if options is not None and not isinstance(options, Mapping):
        raise DataError(f"data set {name!r}: dataset_options must be None or a mapping, got {options!r}")
    own = [arg for arg in keyword_names(loader) if arg not in shared]
    for key, value in (options or {}).items():
        if key not in own:
            raise DataError(f"data set {name!r} does not use {key} (got {value!r}): unknown option {key!r}."
                            f"{nearest(str(key), own)} Its own options: {', '.join(own) or '(none)'}.")
    return dict(options or {})


def stratified_split(
    labels: np.ndarray, *, val_ratio: float, test_ratio: float, seed: int = SPLIT_SEED
) -> dict[str, np.ndarray]:
    """Per-class shuffled split into train/val/test index arrays (each then shuffled once more).

    Each class gives ``round(n * ratio)`` samples to val and test, at least one when the ratio is
    positive and the class has three or more samples; train always keeps at least one.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n = len(idx)
        n_val, n_test = round(n * val_ratio), round(n * test_ratio)
        if n >= 3:
            n_val = max(n_val, 1 if val_ratio > 0 else 0)
            n_test = max(n_test, 1 if test_ratio > 0 else 0)
        while n_val + n_test > n - 1 and (n_val or n_test):
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    return {s: rng.permutation(np.concatenate(p)).astype(np.int64) for s, p in parts.items()}


def resize_images(images: np.ndarray, size: int, *, chunk: int = 1024) -> np.ndarray:
    """Resize a uint8 batch (N, H, W) or (N, H, W, C) to ``size`` x ``size``, bilinear (antialiased down)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    grey = images.ndim == 3
    out = np.empty((len(images), size, size, *(() if grey else images.shape[3:])), np.uint8)
    for start in range(0, len(images), chunk):
        x = torch.from_numpy(images[start : start + chunk].astype(np.float32))  # copy: input may be read-only
        x = x[:, None] if grey else x.permute(0, 3, 1, 2)  # (n, C, H, W)
        down = size < images.shape[1]
        y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=down)
        y = y.round_().clamp_(0, 255).to(torch.uint8)
        out[start : start + chunk] = (y[:, 0] if grey else y.permute(0, 2, 3, 1)).numpy()  # (n, S, S[, C])
    return out


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1) grey -> (H, W, 3); RGB passes through."""
    if image.ndim == 2:
        image = image[:, :, None]
    return np.ascontiguousarray(np.repeat(image, 3, axis=2)) if image.shape[2] == 1 else image


def pil_to_rgb(image: Image.Image, path: str | Path) -> np.ndarray:
    """A PIL image as uint8 (H, W, 3); 16-bit grey is scaled to 8 bits as OpenCV's reader does (``v >> 8``).

    ``convert("RGB")`` would saturate 16-bit values at 255 (a white image). 32-bit integer and float
    images (modes I and F) have no fixed value range to map to 0..255, so they are refused.
    """
    if image.mode.startswith("I;16"):
        return to_rgb((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8))  # native order, (H, W)
    if image.mode in UNSUPPORTED_MODES:
        raise DataError(f"image file {path} has {UNSUPPORTED_MODES[image.mode]} pixels (PIL mode {image.mode}), "
                        "which have no fixed 0..255 mapping; convert it to 8- or 16-bit (PNG, TIFF or JPEG).")
    return np.asarray(image.convert("RGB"))


def over_pixel_limit(image: Image.Image) -> str | None:
    """Why an opened image is over ``PIL.Image.MAX_IMAGE_PIXELS``, or None.

    PIL itself raises ``DecompressionBombError`` only above twice the limit and merely warns between once and
    twice; visattn refuses everything above the limit itself, as its README says. ``MAX_IMAGE_PIXELS = None``
    turns the check off, as in PIL.
    """
    limit = Image.MAX_IMAGE_PIXELS
    pixels = image.width * image.height
    if limit is not None and pixels > limit:
        return (f"{image.width}x{image.height} = {pixels:,} pixels, over PIL.Image.MAX_IMAGE_PIXELS ({limit:,}); "
                "raise that limit in Python if the image is meant to be this large")
    return None


def jpeg_truncated(path: Path) -> str | None:
    """Why a JPEG file is cut short, or None (also for other formats).

    PIL's ``verify`` and OpenCV (which fills the missing part with grey) both pass a truncated JPEG. A
    complete one ends with the end-of-image marker FF D9, a cheap test; only a JPEG without it is decoded,
    to tell truncation from harmless bytes after the marker.
    """
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":  # not a JPEG
            return None
        f.seek(max(0, f.seek(0, 2) - 2))
        if f.read(2) == b"\xff\xd9":
            return None
    try:
        with Image.open(path) as im:
            im.load()
    except DECODE_ERRORS as err:
        return f"{type(err).__name__}: {err}"
    return None


def read_label_text(path: Path, owner: str) -> str:
    """A label, class-name or annotation file as text: UTF-8, with or without a byte-order mark."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{owner}: {path} is not UTF-8 text ({err.reason} at byte {err.start}); "
                        "save it as UTF-8.") from None
    except OSError as err:
        raise DataError(f"{owner}: cannot read {path} ({err.strerror or err}).") from None


def reseed(transform: Any, seed: int) -> None:
    """Reseed an albumentations pipeline in place, cheaply (~35 us), for per-sample deterministic augmentation.

    ``Compose.set_random_seed`` gives every child transform its own generator seeded alike (and costs
    ~190 us); here all children share one numpy and one Python generator that are reseeded in place.
    """
    shared = getattr(transform, "_visattn_shared_rng", None)
    if shared is None:
        shared = (np.random.default_rng(seed), random.Random(seed))
        transform.set_random_state(*shared)
        transform._visattn_shared_rng = shared
    shared[1].seed(seed)
    shared[0].bit_generator.state = np.random.PCG64(seed).state


def apply_transform(transform: Transform | None, image: np.ndarray, seed: int | None) -> Any:
    """Run ``transform`` on an HWC image; with a ``seed`` (see ``EpochSampler``) the randomness is per sample."""
    if transform is None:
        return image
    if seed is not None:
        reseed(transform, seed)
    return transform(image=image)["image"]


@dataclass(eq=False)
class ArrayDataset(Dataset):
    """In-memory images (uint8, (N, H, W) grey or (N, H, W, 3) RGB) with int labels and optional boxes.

    ``boxes[i]`` is ``(x0, y0, x1, y1)`` in the stored image's pixels, ``x1``/``y1`` exclusive.
    Grey images are replicated to 3 channels per sample (cheap) rather than stored three times.
    """

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray | None = None
    transform: Transform | None = None

    def __post_init__(self) -> None:
        n_boxes = len(self.labels) if self.boxes is None else len(self.boxes)
        if not len(self.images) == len(self.labels) == n_boxes:
            raise DataError(
                f"ArrayDataset: images ({len(self.images)}), labels ({len(self.labels)}) and boxes "
                f"({'none' if self.boxes is None else len(self.boxes)}) must have the same length."
            )

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, index: int) -> np.ndarray:
        """The stored image as uint8 (H, W, 3), without any transform."""
        return to_rgb(self.images[index])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = self.raw(index)
        return apply_transform(self.transform, image, seed), int(self.labels[index])

    def subset(self, n: int | None) -> ArrayDataset:
        """The first ``n`` samples (all when ``n`` is None), sharing memory."""
        if n is None or n >= len(self):
            return self
        boxes = None if self.boxes is None else self.boxes[:n]
        return ArrayDataset(self.images[:n], self.labels[:n], boxes, self.transform)

    def with_transform(self, transform: Transform | None) -> ArrayDataset:
        return ArrayDataset(self.images, self.labels, self.boxes, transform)

    def resized(self, size: int) -> ArrayDataset:
        """Resized once to ``size`` x ``size`` with boxes scaled to match."""
        h, w = self.images.shape[1:3]
        boxes = None
        if self.boxes is not None:
            scale = np.array([size / w, size / h, size / w, size / h], np.float32)
            boxes = (self.boxes * scale).astype(np.float32)
        return ArrayDataset(resize_images(self.images, size), self.labels, boxes, self.transform)


@dataclass
class DataSource:
    """Everything a loader returns: the three splits, class names and per-data-set augmentation defaults."""

    name: str
    class_names: list[str]
    splits: dict[str, Dataset]  # "train" / "val" / "test" -> ArrayDataset or ImageFileDataset
    hflip: bool  # may images be mirrored without changing their class?
    scale_min: float  # default lower bound of RandomResizedCrop's area fraction
    in_chans: int = 3
    skipped: list[Path] = field(default_factory=list)  # undecodable files left out (imagefolder)


class EpochSampler(torch.utils.data.Sampler):
    """Shuffles per epoch and gives every sample its own augmentation seed, both from (seed, epoch) alone.

    Yields ``(index, sample_seed)`` keys. Nothing depends on global RNG state, worker count or
    worker lifetime, so a run resumed at epoch k sees exactly the batches the uninterrupted run saw.
    Lightning calls ``set_epoch`` at the start of every epoch.
    """

    def __init__(self, length: int, *, seed: int, shuffle: bool = True) -> None:
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):  # noqa: ANN204
        seq = np.random.SeedSequence([self.seed, self.epoch])
        order_seed, sample_seeds = seq.spawn(2)
        order = np.random.default_rng(order_seed).permutation(self.length) if self.shuffle else range(self.length)
        seeds = sample_seeds.generate_state(self.length)  # (N,) uint32
        return iter([(int(i), int(seeds[i])) for i in order])
