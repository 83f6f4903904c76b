"""``ModelSpec``: everything needed to rebuild a model without the training code (an export's ``model.json``).

It is the one place that builds a model from a description: training, export, evaluation, the sweep's latency
and slot checks and ``visattn profile`` all go through :meth:`ModelSpec.build`. ``MODEL_BUILDERS`` says which
builder makes each task's model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from visattn.data.base import IMAGENET_MEAN, IMAGENET_STD
from visattn.errors import ConfigError
from visattn.models.build import build_model
from visattn.models.detector import build_detector


@dataclass
class ModelSpec:
    """What a model is: the task, the backbone and its blocks, the classes, the input it expects."""

    task: str
    backbone: str
    attn: Any
    num_classes: int
    in_chans: int
    img_size: int
    backbone_args: dict[str, Any]
    class_names: list[str]
    mean: list[float]
    std: list[float]
    neck: str | None = None  # detection only, as the rest below
    scale: str | None = None
    conf_threshold: float = 0.25
    iou_threshold: float = 0.6
    max_det: int = 100
    attn_init: str = "paper"  # how the blocks were started; "identity" changes their gate (visattn.layers.gate)

    @classmethod
    def from_config(cls, values: Mapping[str, Any], *, num_classes: int, in_chans: int = 3,
                    class_names: list[str] | tuple[str, ...] = ()) -> ModelSpec:
        """The model of a run, from its config (``TrainConfig.to_dict()`` or its config.yaml): the normalisation
        its data used (ImageNet's unless ``augment`` sets one), the neck and scale of a detector."""
        task = values.get("task", "classify")
        builder = MODEL_BUILDERS.get(task)
        if builder is None:
            raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(MODEL_BUILDERS)}")
        augment = values.get("augment") or {}
        own = {key: values.get(key) for key in builder.keys}
        return cls(task=task, backbone=values["backbone"], attn=values.get("attn"), num_classes=num_classes,
                   in_chans=in_chans, img_size=int(values["img_size"]),
                   backbone_args=dict(values.get("backbone_args") or {}), class_names=list(class_names),
                   mean=list(augment.get("mean", IMAGENET_MEAN)), std=list(augment.get("std", IMAGENET_STD)),
                   attn_init=values.get("attn_init") or "paper",  # runs made before the option: every block "paper"
                   **own)

    def build(self, *, pretrained: str | Path | None = None) -> nn.Module:
        """The model, freshly initialised (``pretrained``: a local weights file loaded into it)."""
        builder = MODEL_BUILDERS.get(self.task)
        if builder is None:
            raise ConfigError(f"unknown task {self.task!r} in the model spec; valid tasks: "
                              f"{', '.join(MODEL_BUILDERS)}")
        return builder.build(self, pretrained)

    def class_weight_key(self) -> str:
        """The state-dict key whose first dimension is the number of classes."""
        probe = ModelSpec(**{**self.__dict__, "num_classes": 1}).build()
        return getattr(probe, "class_weight_key", None) or f"{probe.classifier_name}.weight"


@dataclass(frozen=True)
class ModelBuilder:
    """How one task's model is built from a spec; ``keys``: the config keys only this task's spec records."""

    build: Callable[[ModelSpec, str | Path | None], nn.Module]
    keys: tuple[str, ...] = field(default=())


def _classifier(spec: ModelSpec, pretrained: str | Path | None) -> nn.Module:
    return build_model(spec.backbone, attn=spec.attn, num_classes=spec.num_classes, in_chans=spec.in_chans,
                       img_size=spec.img_size, pretrained=pretrained, backbone_args=spec.backbone_args,
                       attn_init=spec.attn_init)


def _detector(spec: ModelSpec, pretrained: str | Path | None) -> nn.Module:
    return build_detector(spec.backbone, attn=spec.attn, num_classes=spec.num_classes, neck=spec.neck or "pan",
                          scale=spec.scale or "n", img_size=spec.img_size, pretrained=pretrained,
                          backbone_args=spec.backbone_args, attn_init=spec.attn_init)


MODEL_BUILDERS: dict[str, ModelBuilder] = {
    "classify": ModelBuilder(_classifier),
    "detect": ModelBuilder(_detector, keys=("neck", "scale")),
}
