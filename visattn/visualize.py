"""``visattn visualize``: attention figures and box measurements of a trained run directory."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visattn.data.base import IMAGE_EXTENSIONS
from visattn.data.datamodule import image_files
from visattn.data.transforms import eval_resize
from visattn.errors import ConfigError, DataError
from visattn.export import load_run
from visattn.rundir import check_output_dir, claim_output_dir, read_run_config
from visattn.tasks.factory import build_datamodule
from visattn.viz.capture import capture
from visattn.viz.figures import to_inputs, write_figures
from visattn.viz.gradcam import eval_mode
from visattn.viz.measure import box_mass_report, check_pattern


def load_run_model(run_dir: str | Path, *, checkpoint: str = "best", untrained: bool = False) -> tuple[nn.Module, Any]:
    """The eval-mode model of a run and its ``ModelSpec``; ``untrained``: the same architecture, freshly
    initialised with the run's seed (the reference a trained model is compared with)."""
    model, spec = load_run(run_dir, checkpoint=checkpoint)
    if untrained:
        torch.manual_seed(int(read_run_config(run_dir).seed))
        model = spec.build().eval()
    return model, spec


def run_datamodule(run_dir: str | Path, *, data: str | None = None) -> Any:
    """The run's data module (its data set, size, options; classification or detection), or data set ``data``
    at its size."""
    config = read_run_config(run_dir)
    if data is not None and data != config.data:
        config = replace(config, data=data, data_dir=None, data_args={})
    return build_datamodule(replace(config, num_workers=0))


def read_image_folder(folder: str | Path, *, size: int, n: int) -> tuple[np.ndarray, list[str]]:
    """The first ``n`` images (sorted by path, searched recursively) as uint8 (n, size, size, 3), and their names.

    Decoded and resized as validation does (``image_files``, ``eval_resize``); the figures normalise them after.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())[:n]
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
    files, resize = image_files(paths, np.zeros(len(paths), np.int64), img_size=size), eval_resize(size)
    images = [resize(image=files.raw(i))["image"] for i in range(len(files))]  # each (size, size, 3) uint8
    return np.stack(images), [str(p.relative_to(folder)) for p in paths]


def visualize_run(
    run_dir: str | Path,
    *,
    images_dir: str | Path | None = None,
    data: str | None = None,
    split: str = "test",
    n: int = 8,
    pattern: str | None = None,
    out: str | Path | None = None,
    checkpoint: str = "best",
    untrained: bool = False,
) -> list[Path]:
    """Write the figures of ``n`` images (a folder's, or the run's / ``data``'s ``split``) to ``out``.

    Default ``out``: ``<run>/figures/<checkpoint>`` (``untrained`` for the fresh model). Returns the PNG paths,
    ``index.png`` first.
    """
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    out = Path(out) if out is not None else Path(run_dir) / "figures" / ("untrained" if untrained else checkpoint)
    inputs = [images_dir] if images_dir is not None else []
    check_output_dir(out, flag="--out", inputs=inputs)  # before any work: never a user's folder or the inputs
    model, spec = load_run_model(run_dir, checkpoint=checkpoint, untrained=untrained)
    if images_dir is not None:
        images, _ = read_image_folder(images_dir, size=spec.img_size, n=n)
        boxes = labels = None
        class_names = spec.class_names
    else:
        raw = run_datamodule(run_dir, data=data).raw_samples(split, n)
        images, boxes, labels, class_names = raw.images, raw.boxes, raw.labels, raw.class_names
    check_slot_pattern(model, images[:1], spec, pattern)  # before the folder is claimed: nothing is written
    claim_output_dir(out, flag="--out", made_by="visattn visualize", inputs=inputs)
    if (out / "index.png").is_file():  # never silently: the earlier figures of this folder are replaced
        print(f"visattn: replacing the figures written earlier in {out}", file=sys.stderr)
    return write_figures(model, images, mean=spec.mean, std=spec.std, out_dir=out, pattern=pattern, boxes=boxes,
                         labels=labels, class_names=class_names)


def check_slot_pattern(model: nn.Module, images: np.ndarray, spec: Any, pattern: str | None) -> None:
    """Refuse a ``--slot`` glob that matches none of the maps ``model`` records on ``images`` (one forward pass)."""
    if pattern is None:
        return
    with eval_mode(model), torch.no_grad(), capture(model) as maps:
        model(to_inputs(images, mean=spec.mean, std=spec.std).to(next(model.parameters()).device))
    check_pattern(pattern, maps)


def measure_run(
    run_dir: str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    n: int = 200,
    pattern: str | None = None,
    checkpoint: str = "best",
    untrained: bool = False,
    with_gradcam: bool = True,
) -> dict[str, float]:
    """``box_mass_report`` of a run's model over the first ``n`` images of ``split`` (a data set with boxes).

    Detection runs measure the union of each image's object boxes, over the images that hold objects; they
    have no Grad-CAM reference (it needs a classifier).
    """
    model, spec = load_run_model(run_dir, checkpoint=checkpoint, untrained=untrained)
    datamodule = run_datamodule(run_dir, data=data)
    raw = datamodule.raw_samples(split, n)
    if raw.boxes is None:
        raise DataError(f"data set {datamodule.name!r} records no object boxes; measuring attention mass in boxes "
                         "needs one that does (e.g. cluttered-digits)")
    images, boxes = raw.images, raw.boxes
    if isinstance(boxes, list):  # detection: one (k, 4) array per image; images without objects have no box
        keep = [i for i, b in enumerate(boxes) if len(b)]
        if not keep:
            raise DataError(f"none of the first {n} {split} images of {datamodule.name!r} holds an object box")
        images, boxes = images[keep], [boxes[i] for i in keep]
        with_gradcam = False
    inputs = to_inputs(images, mean=spec.mean, std=spec.std)
    return box_mass_report(model, inputs, boxes, pattern=pattern, with_gradcam=with_gradcam)
