"""Classification data layer: built-in sets, image folders, CIFAR pickles, augmentation config, loaders."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.data import (
    AugmentConfig,
    ClassificationDataModule,
    DataError,
    list_datasets,
    load_cifar,
    load_cluttered_digits,
    load_digits_source,
)
from visattn.data.digits import digit_glyphs, digit_split

SMALL = {"n_train": 120, "n_val": 40, "n_test": 40}


def _png(path: Path, colour: tuple[int, int, int], size: int = 6) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def _folder(root: Path, classes: dict[str, int]) -> Path:
    for c, (name, count) in enumerate(classes.items()):
        for i in range(count):
            _png(root / name / f"{i:03d}.png", (40 * c, 10 * i, 200))
    return root


# ------------------------------------------------------------------ digits
def test_digits_sizes_stratified_and_fixed() -> None:
    labels = digit_glyphs()[1]
    split = digit_split()
    sizes = {k: len(v) for k, v in split.items()}
    assert sum(sizes.values()) == len(labels) == 1797
    assert sizes == {"train": 1259, "val": 269, "test": 269}
    assert len(np.unique(np.concatenate(list(split.values())))) == 1797  # disjoint, complete
    totals = np.bincount(labels, minlength=10)
    for name in ("val", "test"):
        counts = np.bincount(labels[split[name]], minlength=10)
        assert np.all(np.abs(counts - 0.15 * totals) <= 1), (name, counts)
    again = digit_split()
    assert all(np.array_equal(split[k], again[k]) for k in split)
    source = load_digits_source()
    assert source.splits["train"].images.shape == (1259, 8, 8)
    assert source.splits["train"].images.dtype == np.uint8 and source.splits["train"].images.max() == 255


def test_digits_datamodule_batches_and_seed_independent_split() -> None:
    a = ClassificationDataModule(name="digits", img_size=32, batch_size=16, num_workers=0, seed=0, limit=40)
    b = ClassificationDataModule(name="digits", img_size=32, batch_size=16, num_workers=0, seed=7, limit=40)
    assert a.num_classes == 10 and a.in_chans == 3 and a.class_names[3] == "3"
    assert np.array_equal(a.dataset("test").labels, b.dataset("test").labels)  # split ignores run seed
    x, y = next(iter(a.train_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(a.train_dataloader()) == 2  # 40 samples, drop_last
    xv, yv = next(iter(a.val_dataloader()))
    assert xv.shape == (32, 3, 32, 32) and len(a.val_dataloader()) == 2  # eval batches: 2 x the training batch
    assert abs(float(xv.mean())) < 3 and torch.isfinite(xv).all()
    # same seed -> same augmented batch; eval is deterministic
    a2 = ClassificationDataModule(name="digits", img_size=32, batch_size=16, num_workers=0, seed=0, limit=40)
    x2, y2 = next(iter(a2.train_dataloader()))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    raw = a.raw_samples("val", 5)
    assert raw.images.shape == (5, 32, 32, 3) and raw.images.dtype == np.uint8 and raw.boxes is None
    assert np.array_equal(raw.labels, a.dataset("val").labels[:5])


def test_digits_never_flipped_by_default() -> None:
    names = lambda dm: [type(t).__name__ for t in dm.dataset("train").transform.transforms]  # noqa: E731
    dm = ClassificationDataModule(name="digits", num_workers=0, limit=8)
    assert "HorizontalFlip" not in names(dm) and "RandomResizedCrop" in names(dm)
    forced = ClassificationDataModule(name="digits", num_workers=0, limit=8, augment={"hflip": True})
    assert "HorizontalFlip" in names(forced)


def test_worker_loader_runs() -> None:
    dm = ClassificationDataModule(name="digits", img_size=16, batch_size=8, num_workers=1, limit=16)
    batches = list(dm.train_dataloader())
    assert len(batches) == 2 and batches[0][0].shape == (8, 3, 16, 16)


# -------------------------------------------------------- cluttered digits
def test_cluttered_deterministic_and_boxes() -> None:
    a = load_cluttered_digits(**SMALL, generation_seed=3)
    b = load_cluttered_digits(**SMALL, generation_seed=3)
    c = load_cluttered_digits(**SMALL, generation_seed=4)
    for split in ("train", "val", "test"):
        assert np.array_equal(a.splits[split].images, b.splits[split].images)
        assert np.array_equal(a.splits[split].boxes, b.splits[split].boxes)
    assert not np.array_equal(a.splits["train"].images, c.splits["train"].images)
    ds = a.splits["train"]
    assert ds.images.shape == (120, 64, 64) and len(ds) == 120 and ds.labels.max() <= 9
    x0, y0, x1, y1 = ds.boxes.T
    assert np.all((0 <= x0) & (x0 < x1) & (x1 <= 64) & (0 <= y0) & (y0 < y1) & (y1 <= 64))
    assert np.all((x1 - x0 >= 4) & (y1 - y0 >= 4))

    # Same seed without distractors: the digit layer alone. Its ink lies exactly inside its box,
    # and the cluttered canvas is that layer plus fragments (max compositing).
    clean = load_cluttered_digits(**SMALL, generation_seed=3, n_distractors=0).splits["train"]
    assert np.array_equal(clean.boxes, ds.boxes) and np.array_equal(clean.labels, ds.labels)
    assert np.all(ds.images >= clean.images)
    assert (ds.images > clean.images).any()  # distractors add ink
    for img, (bx0, by0, bx1, by1) in zip(clean.images, clean.boxes.astype(int), strict=True):
        inside = np.zeros_like(img, dtype=bool)
        inside[by0:by1, bx0:bx1] = True
        assert not img[~inside].any() and img[inside].max() > 128
        assert img[by0, bx0:bx1].any() and img[by1 - 1, bx0:bx1].any()  # box is tight
        assert img[by0:by1, bx0].any() and img[by0:by1, bx1 - 1].any()


def test_cluttered_datamodule_options_and_raw_boxes() -> None:
    dm = ClassificationDataModule(name="cluttered-digits", img_size=32, num_workers=0, batch_size=8,
                                  dataset_options={**SMALL, "canvas_size": 64})
    raw = dm.raw_samples("test", 3)
    full = load_cluttered_digits(**SMALL).splits["test"]
    assert raw.images.shape == (3, 32, 32, 3)
    np.testing.assert_allclose(raw.boxes, full.boxes[:3] / 2)  # boxes follow the 64 -> 32 resize
    with pytest.raises(DataError, match="n_trian.*Did you mean 'n_train'"):
        ClassificationDataModule(name="cluttered-digits", dataset_options={"n_trian": 5})
    with pytest.raises(DataError, match="max_digit_size"):
        load_cluttered_digits(canvas_size=32, max_digit_size=40)


# ------------------------------------------------------------- imagefolder
def test_imagefolder_flat_split(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", {"cat": 10, "dog": 10, "emu": 10})
    (root / "cat" / "notes.txt").write_text("not an image")
    dm = ClassificationDataModule(name="imagefolder", data_dir=str(root), img_size=16, batch_size=4,
                                  num_workers=0)
    assert dm.class_names == ["cat", "dog", "emu"] and dm.num_classes == 3
    sizes = {s: len(dm.dataset(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 18, "val": 6, "test": 6}  # 2 + 2 per class, stratified
    assert np.array_equal(np.bincount(dm.dataset("val").labels), [2, 2, 2])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert dm.raw_samples("test", 2).images.shape == (2, 16, 16, 3)


def test_imagefolder_split_trees(tmp_path: Path) -> None:
    _folder(tmp_path / "train", {"a": 6, "b": 6})
    _folder(tmp_path / "val", {"a": 2, "b": 1})
    dm = ClassificationDataModule(name="imagefolder", data_dir=str(tmp_path), img_size=8, num_workers=0)
    assert len(dm.dataset("val")) == 3  # from val/
    assert len(dm.dataset("test")) == 2 and len(dm.dataset("train")) == 10  # test carved from train/
    _folder(tmp_path / "test", {"a": 1, "b": 1})
    dm = ClassificationDataModule(name="imagefolder", data_dir=str(tmp_path), img_size=8, num_workers=0)
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [12, 3, 2]


def test_imagefolder_errors(tmp_path: Path) -> None:
    def load(path: Path, **kw: object) -> ClassificationDataModule:
        dm = ClassificationDataModule(name="imagefolder", data_dir=str(path), num_workers=0, **kw)
        dm.setup()
        return dm

    missing = tmp_path / "nope"
    with pytest.raises(DataError, match=r"nope does not exist.*Expected layout"):
        load(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load(tmp_path / "empty")
    with pytest.raises(DataError, match="only one class"):
        load(_folder(tmp_path / "one", {"solo": 5}))
    (tmp_path / "hollow" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="contains no image files"):
        load(tmp_path / "hollow")

    bad = _folder(tmp_path / "bad", {"a": 4, "b": 4})
    (bad / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"broken\.png.*skip_bad_images"):
        load(bad)
    with pytest.warns(UserWarning, match="skipped 1 undecodable"):
        dm = load(bad, skip_bad_images=True)
    assert dm.skipped_images == 1
    assert sum(len(dm.dataset(s)) for s in ("train", "val", "test")) == 8


# ------------------------------------------------------------------- cifar
def _cifar_batch(path: Path, n: int, label_key: str, start: int, extra: dict | None = None) -> None:
    rgb = np.zeros((n, 3, 32, 32), np.uint8)
    rgb[:, 0], rgb[:, 1], rgb[:, 2] = 10, 20, 30
    rgb[:, 0, 0, 0] = np.arange(n) + start  # mark sample identity in pixel (0, 0) red
    labels = [(start + i) % 3 for i in range(n)]
    d = {b"data": rgb.reshape(n, 3072), label_key.encode(): labels, **(extra or {})}
    path.write_bytes(pickle.dumps(d, protocol=2))


def test_cifar10_fake_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for k in range(1, 6):
        _cifar_batch(folder / f"data_batch_{k}", 6, "labels", start=10 * k)
    _cifar_batch(folder / "test_batch", 6, "labels", start=100)
    names = [f"c{i}".encode() for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    dm = ClassificationDataModule(name="cifar", data_dir=str(tmp_path), num_workers=0, batch_size=4)
    assert dm.num_classes == 10 and dm.class_names[:2] == ["c0", "c1"]
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [27, 3, 6]
    raw = dm.raw_samples("test", 2)
    assert raw.images[0, 1, 1].tolist() == [10, 20, 30] and raw.images[1, 0, 0, 0] == 101  # HWC, RGB order
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and int(y.max()) <= 2


def test_cifar100_and_errors(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _cifar_batch(folder / "train", 12, "fine_labels", 0, {b"coarse_labels": [0, 1] * 6})
    _cifar_batch(folder / "test", 4, "fine_labels", 0, {b"coarse_labels": [0, 1] * 2})
    meta = {b"fine_label_names": [f"f{i}" for i in range(100)], b"coarse_label_names": ["x", "y"]}
    (folder / "meta").write_bytes(pickle.dumps(meta))
    fine = load_cifar(data_dir=tmp_path)
    assert len(fine.class_names) == 100 and len(fine.splits["test"]) == 4
    coarse = load_cifar(data_dir=folder, label_mode="coarse")
    assert coarse.class_names == ["x", "y"]

    with pytest.raises(DataError, match=r"missing_dir does not exist.*data_batch_1.*batches\.meta"):
        load_cifar(data_dir=tmp_path / "missing_dir")
    partial = tmp_path / "partial"
    partial.mkdir()
    _cifar_batch(partial / "data_batch_1", 2, "labels", 0)
    with pytest.raises(DataError, match=r"partial has cifar10 files but lacks data_batch_2"):
        load_cifar(data_dir=partial)
    (folder / "test").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match=r"test holds a list"):
        load_cifar(data_dir=tmp_path)
    with pytest.raises(DataError, match="does not use test_ratio"):
        ClassificationDataModule(name="cifar", data_dir=str(tmp_path), test_ratio=0.2)


# ------------------------------------------------------- config and names
def test_augment_config_and_names() -> None:
    with pytest.raises(DataError, match="'hflp'.*Did you mean 'hflip'"):
        AugmentConfig.from_dict({"hflp": True})
    with pytest.raises(DataError, match="'scale_mn'.*Did you mean 'scale_min'"):
        ClassificationDataModule(name="digits", augment={"scale_mn": 0.5})
    cfg = AugmentConfig.from_dict({"scale_min": 0.5, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.hflip is None
    with pytest.raises(DataError, match="std"):
        AugmentConfig(std=(0.5, 0.0, 0.5))
    assert {"digits", "cluttered-digits", "imagefolder", "cifar"} <= set(list_datasets())
    with pytest.raises(DataError, match="digitz.*Did you mean 'digits'.*cluttered-digits.*imagefolder"):
        ClassificationDataModule(name="digitz")
    with pytest.raises(DataError, match="does not use data_dir"):
        ClassificationDataModule(name="digits", data_dir="/tmp")
    with pytest.raises(DataError, match="batch_size"):
        ClassificationDataModule(name="digits", batch_size=0)
    with pytest.raises(DataError, match="unknown split 'tset'.*'test'"):
        ClassificationDataModule(name="digits", limit=4).dataset("tset")


def test_importing_the_data_pipelines_goes_online_nowhere():
    """albumentations asks pypi.org for its newest version on import unless told not to; visattn tells it."""
    code = textwrap.dedent("""
        import socket, time
        asked = []
        def refuse(host, *args, **kwargs):
            asked.append(host)
            raise OSError("offline")
        socket.getaddrinfo = refuse
        import visattn.data.transforms, visattn.data.detect.transforms
        time.sleep(1.0)  # albumentations' check may run in a thread
        print("asked:", asked)
    """)
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "asked: []" in result.stdout, result.stdout + result.stderr
