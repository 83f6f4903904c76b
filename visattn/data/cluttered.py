"""Cluttered digits: real 8x8 glyphs at a random position and scale among fragments of other digits.

After the cluttered-MNIST benchmark of the Spatial Transformer paper (Jaderberg et al., 2015), built
from scikit-learn's bundled digits so nothing is downloaded. Each split draws its glyphs only from the
matching split of ``digits`` (no glyph is shared between train and test), and is generated in memory,
deterministically from ``generation_seed`` (independent of the training seed).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from visattn.data.base import SPLITS, ArrayDataset, DataSource, check, resize_images
from visattn.data.digits import DIGIT_CLASSES, digit_glyphs, digit_split
from visattn.registry import DATASETS


def _ink_boxes(glyphs: np.ndarray) -> np.ndarray:
    """Tight (x0, y0, x1, y1) boxes, exclusive ends, of the non-zero pixels of (N, S, S) glyphs."""
    cols, rows = glyphs.any(axis=1), glyphs.any(axis=2)  # (N, S) each
    s = glyphs.shape[1]
    x0, y0 = cols.argmax(1), rows.argmax(1)
    x1, y1 = s - cols[:, ::-1].argmax(1), s - rows[:, ::-1].argmax(1)
    return np.stack([x0, y0, x1, y1], axis=1).astype(np.int64)  # (N, 4)


def _paste_max(
    canvas: np.ndarray, target: np.ndarray, y: np.ndarray, x: np.ndarray, patches: np.ndarray
) -> None:
    """canvas[target[k], y[k]:y[k]+h, x[k]:x[k]+w] = max(that, patches[k]); targets distinct."""
    h, w = patches.shape[1:3]
    rows = y[:, None, None] + np.arange(h)[None, :, None]  # (K, h, 1)
    cols = x[:, None, None] + np.arange(w)[None, None, :]  # (K, 1, w)
    t = target[:, None, None]  # (K, 1, 1)
    canvas[t, rows, cols] = np.maximum(canvas[t, rows, cols], patches)


@lru_cache(maxsize=2)
def _glyph_pool(min_size: int, max_size: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Every glyph resized once to every side in ``min_size..max_size``, with its ink boxes."""
    glyphs = digit_glyphs()[0]
    pool = {s: resize_images(glyphs, s) for s in range(min_size, max_size + 1)}  # s -> (1797, s, s)
    return pool, {s: _ink_boxes(g) for s, g in pool.items()}  # s -> (1797, 4)


def render_cluttered(
    glyph_ids: np.ndarray,
    *,
    n: int,
    canvas_size: int,
    min_digit_size: int,
    max_digit_size: int,
    n_distractors: int,
    fragment_frac: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render ``n`` canvases using only the glyphs ``glyph_ids`` (indices into ``digit_glyphs()``).

    Returns uint8 images (n, C, C), int64 labels (n,) and int64 ink boxes (n, 4).
    """
    pool, ink = _glyph_pool(min_digit_size, max_digit_size)
    sizes = np.arange(min_digit_size, max_digit_size + 1)
    canvas = np.zeros((n, canvas_size, canvas_size), np.uint8)
    n_glyphs = len(glyph_ids)

    src = rng.integers(0, n_glyphs, n)
    size = rng.choice(sizes, n)
    y = rng.integers(0, canvas_size - size + 1)
    x = rng.integers(0, canvas_size - size + 1)
    boxes = np.zeros((n, 4), np.int64)
    for s in np.unique(size):
        sel = np.flatnonzero(size == s)
        _paste_max(canvas, sel, y[sel], x[sel], pool[int(s)][glyph_ids[src[sel]]])
        boxes[sel] = ink[int(s)][glyph_ids[src[sel]]] + np.stack([x[sel], y[sel], x[sel], y[sel]], axis=1)

    for _ in range(n_distractors):  # one layer at a time, so each target appears once per paste
        other = (src + rng.integers(1, n_glyphs, n)) % n_glyphs  # never the digit's own glyph
        f_size = rng.choice(sizes, n)
        frag = np.maximum(2, np.rint(f_size * fragment_frac)).astype(np.int64)
        fy = rng.integers(0, canvas_size - frag + 1)
        fx = rng.integers(0, canvas_size - frag + 1)
        for s in np.unique(f_size):
            g_sel = np.flatnonzero(f_size == s)
            f = int(frag[g_sel[0]])
            gb = ink[int(s)][glyph_ids[other[g_sel]]]  # (K, 4) ink boxes of the source glyphs
            oy = np.clip(rng.integers(gb[:, 1], gb[:, 3]) - f // 2, 0, s - f)  # crop centred on ink
            ox = np.clip(rng.integers(gb[:, 0], gb[:, 2]) - f // 2, 0, s - f)
            win = np.arange(f)
            rows = oy[:, None, None] + win[None, :, None]  # (K, f, 1)
            cols = ox[:, None, None] + win[None, None, :]  # (K, 1, f)
            patches = pool[int(s)][glyph_ids[other[g_sel]][:, None, None], rows, cols]  # (K, f, f)
            _paste_max(canvas, g_sel, fy[g_sel], fx[g_sel], patches)
    return canvas, digit_glyphs()[1][glyph_ids[src]].astype(np.int64), boxes


@DATASETS.register("cluttered-digits")
def load_cluttered_digits(
    *,
    n_train: int = 6000,
    n_val: int = 1000,
    n_test: int = 10000,
    canvas_size: int = 64,
    min_digit_size: int = 20,
    max_digit_size: int = 36,
    n_distractors: int = 6,
    fragment_frac: float = 0.4,
    generation_seed: int = 0,
) -> DataSource:
    """Generate the three splits; ``dataset.boxes[i]`` is the digit's ink box in canvas pixels.

    Digits are upscaled from 8x8 to a side drawn uniformly from ``min_digit_size..max_digit_size``;
    each distractor is a square crop, ``fragment_frac`` of a digit's side, of another glyph.

    The test split is ten times the val split so that test-set sampling noise sits well below seed noise: at
    86 % accuracy a 95 % Wilson interval is ±0.68 points on 10,000 images (±2.1 on 1,000), while ResNet-18
    seeds differed by 0.4-1.9 points (std) in the first flagship sweep. Rendering it takes ~1 s and 41 MB
    (64 px); note that the test canvases reuse the 269 test glyphs, so glyph-level difficulty is sampled
    less finely than the image count suggests.
    """
    owner = "cluttered-digits"
    for arg, value in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        check(isinstance(value, int) and value >= 1, owner, arg, "an int >= 1", value)
    ok = isinstance(canvas_size, int) and 8 <= canvas_size <= 1024
    check(ok, owner, "canvas_size", "an int in 8..1024", canvas_size)
    ok = isinstance(min_digit_size, int) and 4 <= min_digit_size <= canvas_size
    check(ok, owner, "min_digit_size", f"an int in 4..canvas_size ({canvas_size})", min_digit_size)
    ok = isinstance(max_digit_size, int) and min_digit_size <= max_digit_size <= canvas_size
    allowed = f"an int in min_digit_size ({min_digit_size})..canvas_size ({canvas_size})"
    check(ok, owner, "max_digit_size", allowed, max_digit_size)
    ok = isinstance(n_distractors, int) and 0 <= n_distractors <= 64
    check(ok, owner, "n_distractors", "an int in 0..64", n_distractors)
    ok = isinstance(fragment_frac, (int, float)) and 0.1 <= fragment_frac <= 1.0
    check(ok, owner, "fragment_frac", "a number in 0.1..1.0", fragment_frac)
    ok = isinstance(generation_seed, int) and generation_seed >= 0
    check(ok, owner, "generation_seed", "an int >= 0", generation_seed)

    counts = {"train": n_train, "val": n_val, "test": n_test}
    splits = {}
    for name, idx in digit_split().items():
        rng = np.random.default_rng(np.random.SeedSequence([generation_seed, SPLITS.index(name)]))
        images, y, boxes = render_cluttered(
            idx, n=counts[name], canvas_size=canvas_size, min_digit_size=min_digit_size,
            max_digit_size=max_digit_size, n_distractors=n_distractors, fragment_frac=float(fragment_frac),
            rng=rng,
        )
        splits[name] = ArrayDataset(images, y, boxes.astype(np.float32))
    return DataSource(name=owner, class_names=list(DIGIT_CLASSES), splits=splits, hflip=False, scale_min=0.8)
