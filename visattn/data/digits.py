"""scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test set: 1,797 real images, offline)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from visattn.data.base import SPLIT_SEED, ArrayDataset, DataSource, stratified_split
from visattn.registry import DATASETS

DIGIT_CLASSES: list[str] = [str(d) for d in range(10)]
VAL_RATIO = 0.15
TEST_RATIO = 0.15


@lru_cache(maxsize=1)
def _glyphs() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported lazily: sklearn's import is slow

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), ink is bright
    labels = bunch.target.astype(np.int64)  # (1797,)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def digit_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 glyphs as read-only uint8 (N, 8, 8) (0 = background, 255 = full ink) and int64 labels."""
    return _glyphs()


@lru_cache(maxsize=1)
def _split() -> dict[str, np.ndarray]:
    return stratified_split(_glyphs()[1], val_ratio=VAL_RATIO, test_ratio=TEST_RATIO, seed=SPLIT_SEED)


def digit_split() -> dict[str, np.ndarray]:
    """The fixed stratified 70/15/15 split of the glyph indices (seeded by ``SPLIT_SEED``, not the run)."""
    return {k: v.copy() for k, v in _split().items()}


@DATASETS.register("digits")
def load_digits_source() -> DataSource:
    """The three fixed splits at the native 8x8 (the data module upscales them once to ``img_size``).

    Grey images are replicated to 3 channels per sample. Horizontal flips are off by default:
    a mirrored digit is not the same digit.
    """
    images, labels = _glyphs()
    splits = {name: ArrayDataset(images[idx], labels[idx]) for name, idx in _split().items()}
    return DataSource(
        # a light crop: 8x8 glyphs cropped to 60 % of their area lose strokes; with scale_min 0.6 the default
        # recipe trailed a plain loop without augmentation (benchmarks/recipe_vs_plain_loop.py)
        name="digits", class_names=list(DIGIT_CLASSES), splits=splits, hflip=False, scale_min=0.9
    )
