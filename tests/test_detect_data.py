"""Detection data layer: shapes generator + cache, COCO / YOLO readers, bad input, augmentation, batch contract."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from visattn.data.base import DataError
from visattn.data.detect import DetectionDataModule, detection_collate, shapes
from visattn.data.detect.readers import coco_to_yolo, read_coco, read_yolo
from visattn.data.detect.shapes import ShapesParams, ensure_shapes
from visattn.data.detect.transforms import build_detect_eval_transform, letterbox_params, mosaic4, unletterbox

SMALL = dict(num_train=20, num_val=6, num_test=6)
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_shapes(ShapesParams(**SMALL), cache_dir=tmp_path_factory.mktemp("cache"))


def small_dm(cache_dir: Path, **overrides) -> DetectionDataModule:
    args = dict(name="shapes", batch_size=4, num_workers=0,
                dataset_options={"cache_dir": str(cache_dir), **SMALL})
    args.update(overrides)
    return DetectionDataModule(**args)


def write_png(path: Path, width: int, height: int, value: int = 90) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), value, np.uint8))


def write_coco(root: Path, images: dict[str, list[tuple[str, int, int]]], annotations: dict[str, list[dict]],
               categories: tuple[int, ...] = (3, 7)) -> Path:
    """A COCO set with grey PNGs; ``images[split]`` = [(file_name, width, height)], ids 1.. per split."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, items in images.items():
        for name, w, h in items:
            write_png(root / "images" / split / name, w, h)
        coco = {"images": [{"id": i + 1, "file_name": n, "width": w, "height": h} for i, (n, w, h) in enumerate(items)],
                "annotations": [{"id": k + 1, "iscrowd": 0, **a} for k, a in enumerate(annotations.get(split, []))],
                "categories": [{"id": c, "name": f"c{c}"} for c in categories]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root


def write_yolo(root: Path, labels: dict[str, str], names: list[str] | None = ("a", "b")) -> Path:
    """A YOLO set of 40x20 images (train: the given stems, val: one unlabelled image)."""
    for stem, text in labels.items():
        write_png(root / "images" / "train" / f"{stem}.png", 40, 20)
        (root / "labels" / "train").mkdir(parents=True, exist_ok=True)
        (root / "labels" / "train" / f"{stem}.txt").write_text(text)
    write_png(root / "images" / "val" / "v.png", 40, 20)
    if names is not None:
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


# ------------------------------------------------------------------ shapes
def test_shapes_deterministic_valid_and_cached(shapes_root: Path, tmp_path: Path) -> None:
    again = ensure_shapes(ShapesParams(**SMALL), cache_dir=tmp_path)  # same params, another folder
    for split in ("train", "val", "test"):
        name = f"annotations/instances_{split}.json"
        assert json.loads((again / name).read_text()) == json.loads((shapes_root / name).read_text())
    assert (again / "images/train/000003.png").read_bytes() == (shapes_root / "images/train/000003.png").read_bytes()
    other = ensure_shapes(ShapesParams(**SMALL, generation_seed=1), cache_dir=tmp_path)
    assert other != again
    assert (other / "annotations/instances_train.json").read_text() != (again / "annotations/instances_train.json"
                                                                          ).read_text()

    source = read_coco(shapes_root)
    assert source.class_names == ["circle", "square", "triangle", "digit"]
    assert {s: len(r) for s, r in source.splits.items()} == {"train": 20, "val": 6, "test": 6}
    counts = []
    for records in source.splits.values():
        for rec in records:
            assert rec.width == rec.height == 160 and 1 <= len(rec.boxes) <= 6
            assert np.all(rec.boxes[:, :2] >= 0) and np.all(rec.boxes[:, 2:] <= 160)
            sides = rec.boxes[:, 2:] - rec.boxes[:, :2]  # (N, 2)
            assert np.all(sides >= 3) and np.all(sides.max(1) <= 62)
            assert np.all((rec.labels >= 0) & (rec.labels < 4))
            counts.append(len(rec.boxes))
    assert len(set(counts)) >= 3  # varied object counts

    # a second setup reuses the cache: nothing generated, files untouched
    meta = again / shapes.META
    mtime, before = meta.stat().st_mtime_ns, shapes.generation_count()
    dm = small_dm(tmp_path)
    dm.setup("fit")
    assert shapes.generation_count() == before and meta.stat().st_mtime_ns == mtime
    assert dm.num_classes == 4 and dm.in_chans == 3 and dm.class_names[0] == "circle"


def test_shapes_generation_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    params = ShapesParams(num_train=3, num_val=2, num_test=2)
    real = shapes._write_split

    def killed(root: Path, split: str, index: int, p: ShapesParams) -> None:
        real(root, split, index, p)
        if split == "val":
            raise KeyboardInterrupt  # as if killed half-way

    monkeypatch.setattr(shapes, "_write_split", killed)
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes(params, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither a half data set nor a temp folder
    stale = tmp_path / f".shapes-v1-{params.digest()}.tmp-999999999-1"  # left by a killed process
    stale.mkdir()
    monkeypatch.setattr(shapes, "_write_split", real)
    root = ensure_shapes(params, cache_dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [root.name]
    with pytest.raises(DataError, match="other parameters"):
        ensure_shapes(ShapesParams(num_train=4, num_val=2, num_test=2), data_dir=root)


# ------------------------------------------------------------- batches
def test_batch_contract_and_raw_samples(shapes_root: Path) -> None:
    dm = small_dm(shapes_root.parent, augment={"mosaic": 0.5})
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 160, 160) and images.dtype == torch.float32
    assert len(targets) == 4
    for t in targets:
        assert t["boxes"].dtype == torch.float32 and t["boxes"].shape[1] == 4
        assert t["labels"].dtype == torch.int64 and t["labels"].shape == (len(t["boxes"]),)
        assert isinstance(t["image_id"], int)
        assert torch.all(t["boxes"] >= 0) and torch.all(t["boxes"] <= 160)
        assert torch.all(t["boxes"][:, 2:] > t["boxes"][:, :2])
        assert torch.all((t["labels"] >= 0) & (t["labels"] < 4))
    ds = dm.dataset("train")
    a, b = ds[(3, 123)], ds[(3, 123)]
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])  # seeded per sample

    # eval batches: the raw letterboxed samples, normalised with ImageNet statistics
    images, targets = next(iter(dm.val_dataloader()))
    raw = dm.raw_samples("val", 4)
    assert raw.images.shape == (4, 160, 160, 3) and raw.images.dtype == np.uint8
    expected = (torch.from_numpy(raw.images[0]).permute(2, 0, 1).float() / 255 - IMAGENET_MEAN) / IMAGENET_STD
    assert torch.allclose(images[0], expected, atol=1e-4)
    assert np.allclose(raw.boxes[0], targets[0]["boxes"].numpy()) and raw.image_ids[0] == targets[0]["image_id"]
    assert np.array_equal(raw.labels[0], targets[0]["labels"].numpy())

    # decoding from disk in a (persistent) worker process gives the same batches as the in-memory cache
    lazy = small_dm(shapes_root.parent, num_workers=1, cache_images=False)
    assert lazy.dataset("val").images is None and dm.dataset("val").images is not None
    images2, targets2 = next(iter(lazy.val_dataloader()))
    assert torch.equal(images, images2)
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets, targets2, strict=True))


def test_letterbox_boxes_and_empty_image(tmp_path: Path) -> None:
    root = write_coco(tmp_path / "coco", {"train": [("wide.png", 200, 100), ("empty.png", 50, 50)],
                                          "val": [("v.png", 30, 60)]},
                      {"train": [{"image_id": 1, "category_id": 7, "bbox": [20, 10, 40, 30]}]})
    dm = DetectionDataModule(name="coco", data_dir=str(root), img_size=64, batch_size=2, num_workers=0,
                             augment={"enabled": False})
    assert dm.class_names == ["c3", "c7"]
    images, targets = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 64, 64)
    targets = sorted(targets, key=lambda t: t["image_id"])  # the train loader shuffles
    assert targets[0]["labels"].tolist() == [1]  # category id 7 -> second in sorted id order
    sx, sy, px, py = letterbox_params(width=200, height=100, size=64)
    assert (sx, sy, px, py) == (0.32, 0.32, 0, 16)
    assert np.allclose(targets[0]["boxes"].numpy(), [[20 * sx, 10 * sy + py, 60 * sx, 40 * sy + py]], atol=1e-3)
    assert np.allclose(unletterbox(targets[0]["boxes"].numpy(), width=200, height=100, size=64), [[20, 10, 60, 40]],
                       atol=1e-3)
    assert targets[1]["boxes"].shape == (0, 4) and targets[1]["labels"].shape == (0,)
    assert targets[1]["boxes"].dtype == torch.float32
    assert dm.dataset("test").records[0].path.name == "v.png"  # no test split: val stands in
    batch = detection_collate([dm.dataset("train")[1]])
    assert batch[1][0]["boxes"].shape == (0, 4)


def test_letterbox_params_match_albumentations() -> None:
    rng = np.random.default_rng(0)
    for _ in range(40):
        w, h = (int(v) for v in rng.integers(5, 500, 2))
        box = np.array([[1.5, 2.0, w - 1.0, h - 0.5]], np.float32)
        out = build_detect_eval_transform(img_size=96)(image=np.zeros((h, w, 3), np.uint8), bboxes=box, labels=[0])
        sx, sy, px, py = letterbox_params(width=w, height=h, size=96)
        assert np.allclose(out["bboxes"], box * [sx, sy, sx, sy] + [px, py, px, py], atol=1e-3)


def test_mosaic_keeps_boxes_on_their_objects() -> None:
    rng = np.random.default_rng(0)
    for trial in range(20):
        items = []
        for k in range(4):
            h, w = (int(v) for v in rng.integers(40, 120, 2))
            img = np.zeros((h, w, 3), np.uint8)
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
            img[y0 : y0 + 20, x0 : x0 + 20] = 255  # one white square per image
            items.append((img, np.array([[x0, y0, x0 + 20, y0 + 20]], np.float32), np.array([k])))
        out, boxes, labels = mosaic4(items, size=64, rng=rng, min_visibility=0.25)
        assert out.shape == (64, 64, 3) and boxes.shape == (len(labels), 4) and len(labels) <= 4
        white = out[:, :, 0] > 128
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
            inside = white[int(np.ceil(y0)) : int(y1), int(np.ceil(x0)) : int(x1)]
            assert inside.mean() > 0.9, trial  # the box covers (a letterboxed piece of) its white square
        # a visible piece of >= 300 px is over 25 % of any square (at most 32 x 32 after letterboxing): it has a box
        n, comp, stats, _ = cv2.connectedComponentsWithStats(white.astype(np.uint8))
        for c in range(1, n):
            if stats[c, cv2.CC_STAT_AREA] >= 300:
                ys, xs = np.nonzero(comp == c)
                cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
                assert any(b[0] <= cx <= b[2] and b[1] <= cy <= b[3] for b in boxes), trial


# ------------------------------------------------------------- readers
def test_coco_and_yolo_readers_agree(shapes_root: Path, tmp_path: Path) -> None:
    coco = read_coco(shapes_root)
    yolo = read_yolo(coco_to_yolo(src=shapes_root, dst=tmp_path / "yolo"))
    assert yolo.class_names == coco.class_names
    for split in ("train", "val", "test"):
        a = sorted(coco.splits[split], key=lambda r: r.path.name)
        b = sorted(yolo.splits[split], key=lambda r: r.path.name)
        assert [r.path.name for r in a] == [r.path.name for r in b] and len(a) > 0
        for ra, rb in zip(a, b, strict=True):
            assert ra.image_id == rb.image_id and (ra.width, ra.height) == (rb.width, rb.height)
            assert np.array_equal(ra.labels, rb.labels)
            assert np.allclose(ra.boxes, rb.boxes, atol=1e-3)
    dm = DetectionDataModule(name="yolo", data_dir=str(tmp_path / "yolo"), batch_size=2, num_workers=0, limit=2)
    assert dm.num_classes == 4 and len(dm.dataset("val")) == 2


def test_box_outside_image_clipped_and_degenerate_dropped(tmp_path: Path) -> None:
    anns = [{"image_id": 1, "category_id": 3, "bbox": [-5, 10, 20, 20]},  # clipped to x 0..15
            {"image_id": 1, "category_id": 3, "bbox": [45, 10, 10, 10]},  # entirely right of the image: dropped
            {"image_id": 1, "category_id": 7, "bbox": [10, 10, 0, 5]},  # zero width: dropped
            {"image_id": 1, "category_id": 7, "bbox": [5, 5, 10, 10]}]  # fine
    root = write_coco(tmp_path, {"train": [("a.png", 40, 30)], "val": [("b.png", 40, 30)]}, {"train": anns})
    with pytest.warns(UserWarning, match=r"clipped 1 box.*dropped 2 degenerate"):
        source = read_coco(root)
    rec = source.splits["train"][0]
    assert np.allclose(rec.boxes, [[0, 10, 15, 30], [5, 5, 15, 15]]) and rec.labels.tolist() == [0, 1]
    assert (source.clipped_boxes, source.dropped_boxes) == (1, 2)


def test_coco_bad_input_named(tmp_path: Path) -> None:
    root = write_coco(tmp_path / "a", {"train": [("a.png", 40, 30)], "val": [("b.png", 40, 30)]},
                      {"train": [{"image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]}]})
    with pytest.raises(DataError, match=r"unknown category id 5 in .*instances_train\.json.*known ids: 3, 7"):
        read_coco(root)
    root = write_coco(tmp_path / "b", {"train": [("a.png", 40, 30), ("gone.png", 40, 30), ("c.png", 40, 30)],
                                       "val": [("b.png", 9, 9)]}, {})
    (root / "images" / "train" / "gone.png").unlink()
    with pytest.raises(DataError, match=r"missing image file .*gone\.png"):
        read_coco(root)
    (root / "images" / "train" / "a.png").write_bytes(b"not an image")  # undecodable
    with pytest.warns(UserWarning) as caught:
        dm = DetectionDataModule(name="coco", data_dir=str(root), num_workers=0, skip_bad_images=True)
        dm.setup("fit")
    messages = " ".join(str(w.message) for w in caught)
    # the header is read at the scan (pixel limit, truncation), so the file that is not an image is found there,
    # with the missing one, before training (an image that fails only when decoded: test_safety_round2)
    assert "skipped 2 missing or unreadable" in messages and "undecodable" not in messages
    assert dm.skipped_images == 2 and [r.path.name for r in dm.dataset("train").records] == ["c.png"]
    (root / "images" / "train" / "gone.png").write_bytes((root / "images" / "train" / "c.png").read_bytes())
    with pytest.raises(DataError, match=r"cannot read image file .*a\.png"):  # found by the scan's header read
        DetectionDataModule(name="coco", data_dir=str(root), num_workers=0).setup("fit")
    with pytest.raises(DataError, match="needs data_dir"):
        DetectionDataModule(name="coco").setup("fit")


def test_yolo_bad_input_named(tmp_path: Path) -> None:
    root = write_yolo(tmp_path / "ok", {"full": "0 0.5 0.5 0.5 0.5\n\n1 0.9 0.5 0.4 0.2\n", "empty": ""})
    with pytest.warns(UserWarning, match="clipped 1 box"):
        source = read_yolo(root)
    by_name = {r.path.stem: r for r in source.splits["train"]}
    assert np.allclose(by_name["full"].boxes, [[10, 5, 30, 15], [28, 8, 40, 12]])
    assert by_name["empty"].boxes.shape == (0, 4)  # empty label file: an image without objects
    assert source.splits["val"][0].boxes.shape == (0, 4)  # no label file at all: also fine

    root = write_yolo(tmp_path / "bad", {"x": "0 0.5 0.5 0.5 0.5\n1 0.5 0.5 0.5\n"})
    with pytest.raises(DataError, match=r"malformed line 2 in .*x\.txt"):
        read_yolo(root)
    root = write_yolo(tmp_path / "cls", {"y": "0 0.5 0.5 0.5 0.5\n\n2 0.5 0.5 0.1 0.1\n"})
    with pytest.raises(DataError, match=r"unknown class id 2 on line 3 of .*y\.txt"):
        read_yolo(root)
    root = write_yolo(tmp_path / "noname", {"z": "4 0.5 0.5 0.1 0.1\n"}, names=None)
    assert read_yolo(root).class_names == ["0", "1", "2", "3", "4"]


# ------------------------------------------------------------- options
def test_bad_options_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"detection data set 'shape'.*Did you mean 'shapes'.*coco, shapes, yolo"):
        DetectionDataModule(name="shape")
    with pytest.raises(DataError, match=r"unknown option 'hflp'\. Did you mean 'hflip'"):
        DetectionDataModule(name="shapes", augment={"hflp": 0.5})
    with pytest.raises(DataError, match="mosaic"):
        DetectionDataModule(name="shapes", augment={"mosaic": 2})
    with pytest.raises(DataError, match=r"data set 'coco' does not use num_train"):
        DetectionDataModule(name="coco", data_dir=str(tmp_path), dataset_options={"num_train": 10})
    with pytest.raises(DataError, match="batch_size"):
        DetectionDataModule(name="shapes", batch_size=0)
    with pytest.raises(DataError, match=r"unknown split 'tran'.*Did you mean 'train'"):
        small_dm(tmp_path).dataset("tran")
    assert os.listdir(tmp_path) == []  # nothing was generated for the failing cases
