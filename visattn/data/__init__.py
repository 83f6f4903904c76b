"""Classification data (built-in data sets, albumentations pipelines, a Lightning data module) and the pieces
both tasks share; detection data lives in ``visattn.data.detect``.

Every data set is a loader registered in ``visattn.registry.DATASETS`` that returns a ``DataSource``
(train/val/test map-style data sets, class names, augmentation defaults). Every problem with data
raises ``DataError`` (a ``VisattnError`` and a ``ValueError``).
"""

from __future__ import annotations

import os

# albumentations asks pypi.org for its newest version on import (and waits up to its timeout offline): visattn
# never goes online at run time. Set before any albumentations import, which all live below this package.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from visattn.errors import DataError  # noqa: E402
from visattn.lazy import lazy_face  # noqa: E402
from visattn.registry import DATASETS  # noqa: E402

# One line per data set file: the names it registers (listed without importing the file; see visattn.registry).
DATASETS.declare("visattn.data.cifar", "cifar")
DATASETS.declare("visattn.data.cluttered", "cluttered-digits")
DATASETS.declare("visattn.data.digits", "digits")
DATASETS.declare("visattn.data.folders", "imagefolder")


def list_datasets() -> list[str]:
    """Sorted names of every registered data set."""
    return DATASETS.names()


__getattr__, __dir__ = lazy_face(__name__, {
    "SPLITS": "visattn.data.base",
    "SPLIT_SEED": "visattn.data.base",
    "ArrayDataset": "visattn.data.base",
    "DataSource": "visattn.data.base",
    "load_cifar": "visattn.data.cifar",
    "load_cluttered_digits": "visattn.data.cluttered",
    "ClassificationDataModule": "visattn.data.datamodule",
    "RawSamples": "visattn.data.datamodule",
    "default_num_workers": "visattn.data.datamodule",
    "load_digits_source": "visattn.data.digits",
    "ImageFileDataset": "visattn.data.folders",
    "load_image_folder": "visattn.data.folders",
    "AugmentConfig": "visattn.data.transforms",
    "build_eval_transform": "visattn.data.transforms",
    "build_train_transform": "visattn.data.transforms",
})

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
