"""Classification data (built-in data sets, albumentations pipelines, a Lightning data module) and the pieces
both tasks share; detection data lives in ``visattn.data.detect``.

Every data set is a loader registered in ``visattn.registry.DATASETS`` that returns a ``DataSource``
(train/val/test map-style data sets, class names, augmentation defaults). Every problem with data
raises ``DataError`` (a ``ValueError``).
"""

from __future__ import annotations

import os

# albumentations asks pypi.org for its newest version on import (and waits up to its timeout offline): visattn
# never goes online at run time. Set before any albumentations import, which all live below this package.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from visattn.data import cifar as _cifar  # noqa: F401  (registers "cifar")
from visattn.data import cluttered as _cluttered  # noqa: F401  (registers "cluttered-digits")
from visattn.data import digits as _digits  # noqa: F401  (registers "digits")
from visattn.data import folders as _folders  # noqa: F401  (registers "imagefolder")
from visattn.data.base import SPLIT_SEED, SPLITS, ArrayDataset, DataError, DataSource
from visattn.data.cifar import load_cifar
from visattn.data.cluttered import load_cluttered_digits
from visattn.data.datamodule import ClassificationDataModule, RawSamples, default_num_workers
from visattn.data.digits import load_digits_source
from visattn.data.folders import ImageFileDataset, load_image_folder
from visattn.data.transforms import AugmentConfig, build_eval_transform, build_train_transform
from visattn.registry import DATASETS


def list_datasets() -> list[str]:
    """Sorted names of every registered data set."""
    return DATASETS.names()


__all__ = [
    "SPLITS",
    "SPLIT_SEED",
    "ArrayDataset",
    "AugmentConfig",
    "ClassificationDataModule",
    "DataError",
    "DataSource",
    "ImageFileDataset",
    "RawSamples",
    "build_eval_transform",
    "build_train_transform",
    "default_num_workers",
    "list_datasets",
    "load_cifar",
    "load_cluttered_digits",
    "load_digits_source",
    "load_image_folder",
]
