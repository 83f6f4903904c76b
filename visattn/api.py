"""The Python API: ``visattn.train(backbone=..., attn=...)`` and ``visattn.load(path)`` -> :class:`Predictor`.

``train`` resolves keywords through :func:`visattn.config.make_config`, the code behind ``visattn train``'s flags,
so a call gets the same data-aware defaults as the command line. A predictor runs images through the run's own eval
preprocessing (``visattn.predict``: the transform validation used, or the detector's letterbox) and
postprocessing (softmax top-k, or ``visattn.models.detector.postprocess`` and boxes in the original image's pixels).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visattn.config import TrainConfig, make_config, read_yaml, resolve_config
from visattn.errors import BadArgumentError
from visattn.export import load as load_module
from visattn.export import load_run, read_export_values
from visattn.predict import (
    Classification,
    Detections,
    ImageLike,
    TorchBackend,
    expand_images,
    predict_images,
)
from visattn.training import train as train_config


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
        class count). Detection: boxes scoring at least ``conf`` (default: the export's threshold). The same code
        as ``visattn predict`` (``visattn.predict.predict_images``), so both give the same numbers."""
        backend = TorchBackend(self.module, self.spec, name="the predictor's module")
        return [result for result, _ in predict_images(backend, expand_images(images), top_k=top_k, conf=conf,
                                                       batch_size=batch_size)]  # type: ignore[return-value]


def load(path: str | Path, *, checkpoint: str = "best") -> Predictor:
    """A :class:`Predictor` from an export folder (model.json + model.safetensors) or a run directory (its
    ``checkpoint``: best, last or a path)."""

    path = Path(path)
    if (path / "model.json").exists():
        return Predictor(load_module(path), read_export_values(path))
    module, spec = load_run(path, checkpoint=checkpoint)
    return Predictor(module, dataclasses.asdict(spec) if dataclasses.is_dataclass(spec) else vars(spec))
