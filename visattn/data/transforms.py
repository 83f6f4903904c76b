"""Albumentations 2.x pipelines: a light train augmentation and a deterministic eval transform."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from visattn.data.base import IMAGENET_MEAN, IMAGENET_STD, check, check_options
from visattn.errors import DataError

_OWNER = "AugmentConfig"


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation. ``None`` fields take the data set's default (digits: no flips)."""

    enabled: bool = True  # False: train with the eval transform
    scale_min: float | None = None  # RandomResizedCrop area fraction lower bound
    scale_max: float = 1.0
    hflip: bool | None = None  # horizontal flips (p=0.5)
    color_jitter: float = 0.2  # brightness/contrast/saturation strength (hue a quarter of it); 0 disables
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        check(isinstance(self.enabled, bool), _OWNER, "enabled", "a bool", self.enabled)
        ok = self.scale_min is None or (_is_number(self.scale_min) and 0.0 < self.scale_min <= 1.0)
        check(ok, _OWNER, "scale_min", "None or a number in (0, 1]", self.scale_min)
        ok = _is_number(self.scale_max) and 0.0 < self.scale_max <= 1.0
        ok = ok and (self.scale_min is None or self.scale_min <= self.scale_max)
        check(ok, _OWNER, "scale_max", "a number in (0, 1] and >= scale_min", self.scale_max)
        ok = self.hflip is None or isinstance(self.hflip, bool)
        check(ok, _OWNER, "hflip", "None or a bool", self.hflip)
        ok = _is_number(self.color_jitter) and 0.0 <= self.color_jitter <= 1.0
        check(ok, _OWNER, "color_jitter", "a number in [0, 1]", self.color_jitter)
        for arg, positive in (("mean", False), ("std", True)):
            value = getattr(self, arg)
            ok = isinstance(value, (tuple, list)) and len(value) == 3 and all(map(_is_number, value))
            if positive:
                ok = ok and all(v > 0 for v in value)
            check(ok, _OWNER, arg, "3 numbers (RGB)" + (", all > 0" if positive else ""), value)
            object.__setattr__(self, arg, tuple(float(v) for v in value))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AugmentConfig:
        """Build from a config mapping; an unknown key raises ``DataError`` naming the nearest valid key."""
        if not isinstance(values, Mapping):
            raise DataError(f"{_OWNER}: expected a mapping of options, got {type(values).__name__}.")
        check_options(_OWNER, values, [f.name for f in dataclasses.fields(cls)])
        return cls(**values)


def resolve_augment(augment: AugmentConfig | Mapping[str, Any] | None) -> AugmentConfig:
    """``None`` -> defaults, a mapping -> ``AugmentConfig.from_dict``, a config passes through."""
    if augment is None:
        return AugmentConfig()
    if isinstance(augment, AugmentConfig):
        return augment
    return AugmentConfig.from_dict(augment)


def eval_resize(img_size: int) -> A.Resize:
    """The resize of every eval input (validation, test, evaluate, predict, visualize): OpenCV bilinear."""
    return A.Resize(img_size, img_size)


def build_eval_transform(*, img_size: int, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Resize to ``img_size`` square, normalise, HWC uint8 -> CHW float32 tensor.

    The one eval preprocessing: validation and test build it from the run's config, ``visattn predict`` and
    ``evaluate`` from ``model.json`` (img_size, mean, std), so a prediction sees the input validation saw.
    """
    return A.Compose(
        [eval_resize(img_size), A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    )


def build_train_transform(
    config: AugmentConfig, *, img_size: int, hflip_default: bool, scale_min_default: float, seed: int
) -> A.Compose:
    """RandomResizedCrop, optional HorizontalFlip, light ColorJitter, Normalize, ToTensorV2 (seeded)."""
    if not config.enabled:
        return build_eval_transform(img_size=img_size, mean=config.mean, std=config.std)
    scale_min = scale_min_default if config.scale_min is None else config.scale_min
    scale_min = min(scale_min, config.scale_max)
    ops: list[Any] = [A.RandomResizedCrop(size=(img_size, img_size), scale=(scale_min, config.scale_max))]
    if hflip_default if config.hflip is None else config.hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if config.color_jitter > 0:
        cj = config.color_jitter
        ops.append(A.ColorJitter(brightness=cj, contrast=cj, saturation=cj, hue=cj / 4, p=0.5))
    ops += [A.Normalize(mean=config.mean, std=config.std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(ops, seed=seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one cv2 thread per worker (augmentation is seeded per sample)."""
    cv2.setNumThreads(1)
