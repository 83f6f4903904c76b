"""The Python API: ``visattn.train(backbone=..., attn=...)`` and ``visattn.load(path)`` -> :class:`Predictor`.

``train`` resolves keywords through :func:`visattn.config.make_config`, the code behind ``visattn train``'s flags,
so a call gets the same data-aware defaults as the command line. A predictor runs images through the run's own eval
preprocessing (``visattn.predict``: the transform validation used, or the detector's letterbox) and
postprocessing (softmax top-k, or ``visattn.models.detector.postprocess`` and boxes in the original image's pixels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from visattn.config import TrainConfig, make_config, read_yaml, resolve_config
from visattn.data.base import pil_to_rgb
from visattn.data.detect.transforms import letterbox, unletterbox
from visattn.data.transforms import build_eval_transform
from visattn.errors import BadArgumentError, BadValueError
from visattn.export import load as load_module
from visattn.export import load_run, read_export_values
from visattn.models.detector import postprocess
from visattn.predict import list_images, open_rgb
from visattn.training import train as train_config

ImageLike = str | Path | Image.Image | np.ndarray


@dataclass
class Run:
    """A finished training run: its directory, metrics.json as a dict, and its resolved config."""

    dir: Path
    metrics: dict[str, Any]
    config: TrainConfig

    def load(self, *, checkpoint: str = "best") -> Predictor:
        """A predictor of this run's weights (``best`` or ``last`` checkpoint)."""
        return load(self.dir, checkpoint=checkpoint)


def train(config: TrainConfig | Mapping[str, Any] | None = None, /, *, config_file: str | Path | None = None,
          **values: Any) -> Run:
    """Train one run, as ``visattn train`` does; returns the :class:`Run`.

    ``values`` are ``TrainConfig`` keys (``backbone="resnet18", attn="cbam", epochs=3``); an unknown key is an error
    naming the valid ones. ``config_file``: a YAML file or packaged config name, as ``--config`` (keywords win).
    ``config``: a ``TrainConfig`` or a mapping, used as the file values would be. Defaults not given (data set,
    image size by data set, batch size, epochs, learning rate by optimiser) are filled as on the command line.
    """
    base: dict[str, Any] = {}
    if config_file is not None:
        base.update(read_yaml(resolve_config(config_file)))
    if isinstance(config, TrainConfig):
        base.update({k: v for k, v in config.to_dict().items() if v != getattr(TrainConfig(), k)})
    elif config is not None:
        base.update(config)
    resolved = make_config(base, values, source=str(config_file) if config_file else "visattn.train()")
    metrics = train_config(resolved)
    return Run(dir=Path(resolved.out) / resolved.run_name(), metrics=metrics, config=resolved)


@dataclass
class Classification:
    """One image's prediction: the top class and the ``top`` (name, probability) pairs, best first."""

    image: str | None
    label: str
    index: int
    score: float
    top: list[tuple[str, float]]


@dataclass
class Detections:
    """One image's boxes: ``boxes`` (K, 4) x0, y0, x1, y1 in the original image's pixels; ``scores`` (K,);
    ``indices`` (K,) class indices and ``labels`` their names."""

    image: str | None
    boxes: np.ndarray
    scores: np.ndarray
    indices: np.ndarray
    labels: list[str]


class Predictor:
    """A model with its preprocessing and postprocessing.

    ``predictor(images)`` or ``predictor.predict(images)``: a path, a folder (every image in it), a PIL image, an
    (H, W, 3) uint8 RGB array, or a list of them -> one :class:`Classification` or :class:`Detections` per image.
    ``predictor(tensor)``: the raw module's output on an already preprocessed (B, C, S, S) batch, as before.
    ``predictor.module``: the ``nn.Module`` itself; ``predictor.spec``: model.json's values.
    """

    def __init__(self, module: nn.Module, spec: Mapping[str, Any]) -> None:
        self.module = module.eval()
        self.spec = dict(spec)
        self.task = self.spec.get("task", "classify")
        self.class_names = list(self.spec.get("class_names") or [str(i) for i in range(self.spec["num_classes"])])

    def __getattr__(self, name: str) -> Any:
        """Anything else is the module's (``predictor.eval()``, ``predictor.parameters()``), as when ``load``
        returned the module itself."""
        if name == "module":
            raise AttributeError(name)
        return getattr(self.module, name)

    def __repr__(self) -> str:
        return (f"Predictor({self.task}, {self.spec.get('backbone')} + {self.spec.get('attn') or 'no attention'}, "
                f"{len(self.class_names)} classes, {self.spec.get('img_size')} px)")

    def __call__(self, images: Any, **options: Any) -> Any:
        if isinstance(images, torch.Tensor):
            if options:
                raise BadArgumentError(f"options {sorted(options)} apply to images, not to a preprocessed tensor")
            return self.module(images)
        return self.predict(images, **options)

    def predict(self, images: ImageLike | Sequence[ImageLike], *, top_k: int = 5, conf: float | None = None,
                batch_size: int = 16) -> list[Classification] | list[Detections]:
        """Predictions for ``images`` (see the class docstring). Classification: ``top_k`` classes (at most the
        class count). Detection: boxes scoring at least ``conf`` (default: the export's threshold)."""
        items = expand_images(images)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise BadValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        out: list[Any] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            rgb = [(name, to_rgb(item)) for name, item in chunk]
            out += self._detect(rgb, conf) if self.task == "detect" else self._classify(rgb, top_k)
        return out

    def _classify(self, rgb: list[tuple[str | None, np.ndarray]], top_k: int) -> list[Classification]:

        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise BadValueError(f"top_k must be an integer >= 1, got {top_k!r}")
        transform = build_eval_transform(img_size=self.spec["img_size"], mean=self.spec["mean"], std=self.spec["std"])
        batch = torch.stack([transform(image=image)["image"] for _, image in rgb])  # (n, C, S, S)
        with torch.no_grad():
            probs = self.module(batch).float().softmax(-1)  # (n, classes)
        k = min(top_k, probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        results = []
        for (name, _), vals, idx in zip(rgb, values.tolist(), indices.tolist(), strict=True):
            top = [(self.class_names[i], float(v)) for i, v in zip(idx, vals, strict=True)]
            results.append(Classification(image=name, label=top[0][0], index=idx[0], score=top[0][1], top=top))
        return results

    def _detect(self, rgb: list[tuple[str | None, np.ndarray]], conf: float | None) -> list[Detections]:

        threshold = float(self.spec.get("conf_threshold", 0.25)) if conf is None else float(conf)
        if not 0.0 <= threshold < 1.0:
            raise BadValueError(f"conf must be in [0, 1), got {conf}")
        size = self.spec["img_size"]
        mean, std = np.array(self.spec["mean"], np.float32), np.array(self.spec["std"], np.float32)
        batch = []
        for _, image in rgb:
            boxed, _ = letterbox(image, np.zeros((0, 4), np.float32), size=size)  # (S, S, 3) uint8
            batch.append(((boxed.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))  # (3, S, S)
        with torch.no_grad():
            found = postprocess(self.module(torch.from_numpy(np.stack(batch))), conf_threshold=threshold,
                                iou_threshold=self.spec.get("iou_threshold", 0.6),
                                max_det=self.spec.get("max_det", 100))
        results = []
        for (name, image), one in zip(rgb, found, strict=True):
            boxes = unletterbox(one["boxes"].numpy(), width=image.shape[1], height=image.shape[0], size=size)
            indices = one["labels"].numpy().astype(np.int64)
            results.append(Detections(image=name, boxes=boxes, scores=one["scores"].numpy(), indices=indices,
                                      labels=[self.class_names[i] if i < len(self.class_names) else str(i)
                                              for i in indices.tolist()]))
        return results


def expand_images(images: Any) -> list[tuple[str | None, Any]]:
    """``(name, item)`` pairs: a folder becomes its image files (sorted), a path its file, in-memory images None."""

    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        images = [images]
    if not isinstance(images, Iterable):
        raise BadArgumentError(f"images must be a path, a folder, a PIL image, an (H, W, 3) array or a list of "
                               f"them, got {type(images).__name__}")
    items: list[tuple[str | None, Any]] = []
    for item in images:
        if isinstance(item, (str, Path)):
            path = Path(item)
            if path.is_dir():
                items += [(str(p), p) for p in list_images(path)]
            elif path.is_file():
                items.append((str(path), path))
            else:
                raise FileNotFoundError(f"image not found: {path}")
        elif isinstance(item, (Image.Image, np.ndarray)):
            items.append((None, item))
        else:
            raise BadArgumentError(f"cannot predict on a {type(item).__name__}: give a path, a folder, a PIL image "
                                   "or an (H, W, 3) uint8 RGB array")
    if not items:
        raise BadValueError("no images given")
    return items


def to_rgb(item: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB, decoded as ``visattn predict`` decodes files."""

    if isinstance(item, Path):
        return np.asarray(open_rgb(item))
    if isinstance(item, Image.Image):
        return pil_to_rgb(item, "a PIL image")
    array = np.asarray(item)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise BadValueError(f"an image array must be (H, W, 3) uint8 RGB, got {array.shape} {array.dtype}")
    return array


def load(path: str | Path, *, checkpoint: str = "best") -> Predictor:
    """A :class:`Predictor` from an export folder (model.json + model.safetensors) or a run directory (its
    ``checkpoint``: best, last or a path)."""

    path = Path(path)
    if (path / "model.json").exists():
        return Predictor(load_module(path), read_export_values(path))
    module, spec = load_run(path, checkpoint=checkpoint)
    return Predictor(module, dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else vars(spec))
