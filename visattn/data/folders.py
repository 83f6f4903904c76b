"""Image folders: one sub-folder per class, optionally inside ``train/``, ``val/``, ``test/`` sub-trees."""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from visattn.data.base import (
    DECODE_ERRORS,
    IMAGE_EXTENSIONS,
    SPLIT_SEED,
    SPLITS,
    UNSUPPORTED_MODES,
    DataError,
    DataSource,
    Transform,
    apply_transform,
    check,
    jpeg_truncated,
    over_pixel_limit,
    pil_to_rgb,
    stratified_split,
)
from visattn.registry import DATASETS

LAYOUT = (
    "Expected layout: <root>/<class_name>/<image files> (one sub-folder per class, at least two classes), "
    "or the same inside <root>/train/ with optional <root>/val/ and <root>/test/. "
    f"Image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}."
)


class ImageFileDataset(Dataset):
    """Images decoded with PIL on access to RGB uint8 HWC; ``draft_size`` lets JPEGs decode smaller.

    ``skip_bad``: an image that fails to decode when it is loaded (one the up-front scan passed, e.g. a PNG with
    valid checksums but corrupt pixel data) is skipped: the next decodable image of the split (with its label)
    takes its place in the batch, and it is counted in ``bad_count`` (shared with loader worker processes).
    """

    boxes = None

    def __init__(
        self,
        paths: Sequence[Path],
        labels: np.ndarray,
        transform: Transform | None = None,
        *,
        draft_size: int | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform
        self.draft_size = draft_size
        self.skip_bad = skip_bad
        # one flag per image in shared memory: loader workers forked (or spawned) from here mark what failed
        self._bad = multiprocessing.RawArray("b", len(self.paths)) if skip_bad and self.paths else None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def bad_count(self) -> int:
        """Images skipped so far because they failed to decode when loaded (``skip_bad``)."""
        return int(sum(self._bad)) if self._bad is not None else 0

    def raw(self, index: int) -> np.ndarray:
        """The decoded image as uint8 (H, W, 3), without any transform."""
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                too_big = over_pixel_limit(im)
                if too_big:
                    raise DataError(f"cannot decode image file {path}: {too_big}.")
                if self.draft_size is not None:
                    im.draft("RGB", (self.draft_size, self.draft_size))  # JPEG: DCT downscale; else no-op
                im.load()
                return pil_to_rgb(im, path)
        except DataError:
            raise
        except DECODE_ERRORS as err:
            raise DataError(f"cannot decode image file {path} ({type(err).__name__}: {err}).") from None

    def _load(self, index: int) -> tuple[np.ndarray, int]:
        """(image, label) of ``index``, or with ``skip_bad`` of the next image that decodes."""
        if self._bad is None:
            return self.raw(index), int(self.labels[index])
        for step in range(len(self)):
            k = (index + step) % len(self)
            if self._bad[k]:
                continue
            try:
                return self.raw(k), int(self.labels[k])
            except DataError as err:
                self._bad[k] = 1
                warnings.warn(f"skipped an image that failed to decode while loading (--skip-bad-images): {err}",
                              stacklevel=2)
        raise DataError(f"every image of this split failed to decode, e.g. {self.paths[index]}.")

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, label = self._load(index)
        return apply_transform(self.transform, image, seed), label

    def subset(self, n: int | None) -> ImageFileDataset:
        """The first ``n`` samples (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        return ImageFileDataset(self.paths[:n], self.labels[:n], self.transform, draft_size=self.draft_size,
                                skip_bad=self.skip_bad)

    def with_transform(self, transform: Transform | None) -> ImageFileDataset:
        return ImageFileDataset(self.paths, self.labels, transform, draft_size=self.draft_size,
                                skip_bad=self.skip_bad)


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _scan(tree: Path) -> dict[str, list[Path]]:
    """Class name -> image paths under ``tree``; a class folder without images is an error."""
    classes = {}
    for class_dir in _visible_dirs(tree):
        files = _images_in(class_dir)
        if not files:
            raise DataError(f"imagefolder: class folder {class_dir} contains no image files. {LAYOUT}")
        classes[class_dir.name] = files
    if not classes:
        raise DataError(f"imagefolder: no class sub-folders found in {tree}. {LAYOUT}")
    return classes


def _is_decodable(path: Path, *, full: bool = False) -> tuple[bool, str]:
    """Will ``ImageFileDataset`` decode this file? Checked up front so that training never meets a bad file.

    ``verify`` alone passes a truncated JPEG (it does not read the pixel data). Full decoding finds it
    but costs ~2 ms per ImageNet-sized JPEG, so a JPEG is decoded only when it lacks its end marker
    (``jpeg_truncated``); a PNG's ``verify`` checks every chunk's checksum up to IEND (not that the pixel
    data inflates: ``full`` decodes every image, ``--verify-images full``); other formats are decoded.
    Images over ``PIL.Image.MAX_IMAGE_PIXELS`` and 32-bit and float images are refused (see ``pil_to_rgb``).
    """
    try:
        with Image.open(path) as im:
            too_big = over_pixel_limit(im)
            if too_big:
                return False, too_big
            if im.mode in UNSUPPORTED_MODES:
                return False, f"{UNSUPPORTED_MODES[im.mode]} pixels (PIL mode {im.mode}) are not supported"
            if full:
                im.load()
                return True, ""
            if im.format == "JPEG":
                why = jpeg_truncated(path)
                return why is None, why or ""
            if im.format == "PNG":
                im.verify()
            else:
                im.load()
        return True, ""
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad files
        return False, f"{type(err).__name__}: {err}"


def _flatten(classes: dict[str, list[Path]], index: dict[str, int]) -> tuple[list[Path], np.ndarray]:
    paths = [p for name in classes for p in classes[name]]
    labels = np.array([index[name] for name in classes for _ in classes[name]], dtype=np.int64)
    return paths, labels


@DATASETS.register("imagefolder")
def load_image_folder(
    *,
    data_dir: str | Path | None = None,
    val_ratio: float = 0.15,
    test_ratio: float = 0.15,
    skip_bad_images: bool = False,
    verify_images: str = "quick",
) -> DataSource:
    """Scan, verify and split an image folder; missing ``val/``/``test/`` trees are carved from train.

    The carve is stratified and fixed (``SPLIT_SEED``). Every file is checked up front (``_is_decodable``:
    truncated, over PIL's pixel limit, 32-bit/float; every pixel decoded with ``verify_images="full"``); a bad one
    raises naming it, or is skipped and counted when ``skip_bad_images``.
    """
    owner = "imagefolder"
    check(verify_images in ("quick", "full"), owner, "verify_images", "'quick' or 'full'", verify_images)
    ok = isinstance(val_ratio, (int, float)) and 0 <= val_ratio < 1
    check(ok, owner, "val_ratio", "in [0, 1)", val_ratio)
    ok = isinstance(test_ratio, (int, float)) and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1
    check(ok, owner, "test_ratio", "in [0, 1) with val_ratio + test_ratio < 1", test_ratio)
    if data_dir is None:
        raise DataError(f"imagefolder: data_dir is required (the root folder of the images). {LAYOUT}")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"imagefolder: data folder {root} {what}. {LAYOUT}")

    present = [s for s in SPLITS if (root / s).is_dir()]
    if present:
        if "train" not in present:
            raise DataError(
                f"imagefolder: {root} has {'/, '.join(present)}/ but no train/ sub-folder. {LAYOUT}"
            )
        others = [d.name for d in _visible_dirs(root) if d.name not in SPLITS]
        if others:
            raise DataError(
                f"imagefolder: {root} mixes split folders ({'/, '.join(present)}/) with other folders "
                f"({', '.join(others[:5])}); use one layout. {LAYOUT}"
            )
        trees = {s: _scan(root / s) for s in present}
    else:
        trees = {"train": _scan(root)}
    class_names = sorted(trees["train"])
    if len(class_names) < 2:
        raise DataError(
            f"imagefolder: found only one class ({class_names[0]!r}) in {root / ('train' if present else '')}"
            "; "
            f"classification needs at least two. {LAYOUT}"
        )
    for split, tree in trees.items():
        unknown = sorted(set(tree) - set(class_names))
        if unknown:
            raise DataError(f"imagefolder: {root / split} has class folders {unknown} that train/ lacks.")

    bad: list[tuple[Path, str]] = []
    for tree in trees.values():
        for name in tree:
            keep = []
            for path in tree[name]:
                ok, why = _is_decodable(path, full=verify_images == "full")
                if ok:
                    keep.append(path)
                else:
                    bad.append((path, why))
            tree[name] = keep
    if bad and not skip_bad_images:
        examples = "; ".join(f"{p} ({why})" for p, why in bad[:3])
        raise DataError(
            f"imagefolder: {len(bad)} image file(s) cannot be decoded, e.g. {examples}. Remove or fix them, "
            "or pass --skip-bad-images (config: skip_bad_images: true) to leave them out; they are then counted and "
            "reported."
        )
    skipped = [p for p, _ in bad]
    index = {name: i for i, name in enumerate(class_names)}
    for split, tree in trees.items():
        empty = [name for name, files in tree.items() if not files]
        if empty:
            raise DataError(
                f"imagefolder: after skipping bad files, {root / split} classes {empty} have no images."
            )

    paths, labels = _flatten(trees["train"], index)
    carve = stratified_split(
        labels,
        val_ratio=0.0 if "val" in trees else float(val_ratio),
        test_ratio=0.0 if "test" in trees else float(test_ratio),
        seed=SPLIT_SEED,
    )
    splits: dict[str, Dataset] = {}
    for split in SPLITS:
        if split in trees and split != "train":
            split_paths, split_labels = _flatten(trees[split], index)
        else:
            split_paths, split_labels = [paths[i] for i in carve[split]], labels[carve[split]]
        ratio = {"train": 1.0, "val": val_ratio, "test": test_ratio}[split]
        if not split_paths and (ratio > 0 or split in trees):
            raise DataError(
                f"imagefolder: the {split} split of {root} is empty: {len(paths)} images in "
                f"{len(class_names)} classes are too few for {split}_ratio={ratio} (a class needs 3 or more "
                f"images to give one to val and test). Add images, set {split}_ratio=0, or add a "
                f"{split}/ tree."
            )
        splits[split] = ImageFileDataset(split_paths, split_labels)
    return DataSource(name="imagefolder", class_names=class_names, splits=splits, hflip=True, scale_min=0.35,
                      skipped=skipped)
