"""CIFAR-10 / CIFAR-100 from a local copy of the "python version" pickles (nothing is downloaded)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from visattn.data.base import SPLIT_SEED, ArrayDataset, DataError, DataSource, check, stratified_split
from visattn.registry import DATASETS

FORMATS: dict[str, tuple[str, tuple[str, ...], str, str]] = {
    # variant: (sub-folder of the official archive, files, train files' label key, meta names key)
    "cifar10": (
        "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
         "batches.meta"),
        "labels",
        "label_names",
    ),
    "cifar100": ("cifar-100-python", ("train", "test", "meta"), "fine_labels", "fine_label_names"),
}


def _expected(variant: str) -> str:
    sub, files, _, _ = FORMATS[variant]
    return f"{variant}: {', '.join(files)} (in <data_dir> or <data_dir>/{sub}/)"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Loads plain containers and numpy arrays only: a pickle cannot run arbitrary code through us."""

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not the expected format"
        raise DataError(
            f"cifar: {path} is not a CIFAR python pickle ({type(err).__name__}: {err}). Expected the "
            "'python version' archives (cifar-10-python.tar.gz / cifar-100-python.tar.gz), extracted."
        ) from None
    if not isinstance(obj, dict):
        raise DataError(
            f"cifar: {path} holds a {type(obj).__name__}, expected a dict of the CIFAR pickle format."
        )
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _load_pickle(path)
    if "data" not in d or label_key not in d:
        raise DataError(
            f"cifar: {path} has keys {sorted(d)}, expected 'data' (N x 3072 uint8) and {label_key!r}."
        )
    data = np.asarray(d["data"], dtype=np.uint8)
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(
            f"cifar: {path} 'data' has shape {data.shape} for {len(labels)} labels; expected (N, 3072) "
            "rows of 32x32 RGB, channel-major."
        )
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels  # (N, 32, 32, 3)


def _find(root: Path, variant: str) -> tuple[str, Path]:
    variants = list(FORMATS) if variant == "auto" else [variant]
    partial: list[str] = []
    for v in variants:
        sub, files, _, _ = FORMATS[v]
        for folder in (root, root / sub):
            present = [f for f in files if (folder / f).is_file()]
            if len(present) == len(files):
                return v, folder
            if present:
                missing = [f for f in files if f not in present]
                partial.append(f"{folder} has {v} files but lacks {', '.join(missing)}")
    expected = "; or ".join(_expected(v) for v in variants)
    found = (" " + "; ".join(partial) + ".") if partial else ""
    raise DataError(f"cifar: no complete CIFAR pickle set under {root}.{found} Expected {expected}.")


@DATASETS.register("cifar")
def load_cifar(
    *,
    data_dir: str | Path | None = None,
    val_ratio: float = 0.1,
    variant: str = "auto",
    label_mode: str = "fine",
) -> DataSource:
    """Train/test pickles with a fixed stratified ``val_ratio`` carved from train.

    ``variant`` is "auto", "cifar10" or "cifar100"; ``label_mode`` ("fine" or "coarse") selects
    CIFAR-100's 100 or 20 classes.
    """
    check(variant in ("auto", *FORMATS), "cifar", "variant", "'auto', 'cifar10' or 'cifar100'", variant)
    check(label_mode in ("fine", "coarse"), "cifar", "label_mode", "'fine' or 'coarse'", label_mode)
    ok = isinstance(val_ratio, (int, float)) and 0 <= val_ratio < 1
    check(ok, "cifar", "val_ratio", "in [0, 1)", val_ratio)
    expected = "; or ".join(_expected(v) for v in FORMATS)
    if data_dir is None:
        raise DataError(
            f"cifar: data_dir is required (a local folder; nothing is downloaded). Expected {expected}."
        )
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"cifar: data folder {root} does not exist. Expected {expected}.")
    variant, folder = _find(root, variant)
    _, files, label_key, names_key = FORMATS[variant]
    if variant == "cifar100" and label_mode == "coarse":
        label_key, names_key = "coarse_labels", "coarse_label_names"

    parts = [_read_batch(folder / f, label_key) for f in files[:-2]]  # (N_i, 32, 32, 3) each
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_batch(folder / files[-2], label_key)
    meta = _load_pickle(folder / files[-1])
    names = meta.get(names_key)
    if not isinstance(names, (list, tuple)) or not names:
        raise DataError(
            f"cifar: {folder / files[-1]} has keys {sorted(meta)}, expected a {names_key!r} list."
        )
    try:
        class_names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    except UnicodeDecodeError as err:
        raise DataError(f"cifar: class names in {folder / files[-1]} are not UTF-8 ({err.reason}).") from None
    top = int(max(train_y.max(), test_y.max()))
    if train_y.min() < 0 or top >= len(class_names):
        raise DataError(
            f"cifar: labels in {folder} reach {top} but the meta file names {len(class_names)} classes."
        )

    idx = stratified_split(train_y, val_ratio=float(val_ratio), test_ratio=0.0, seed=SPLIT_SEED)
    splits = {
        "train": ArrayDataset(train_x[idx["train"]], train_y[idx["train"]]),
        "val": ArrayDataset(train_x[idx["val"]], train_y[idx["val"]]),
        "test": ArrayDataset(test_x, test_y),
    }
    return DataSource(name="cifar", class_names=class_names, splits=splits, hflip=True, scale_min=0.6)
