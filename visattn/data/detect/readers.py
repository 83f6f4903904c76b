"""Detection data on disk -> per-split lists of records: COCO JSON and YOLO txt readers, and a COCO -> YOLO exporter.

Every reader returns a ``DetectionSource``: class names and, per split, ``DetectionRecord`` s with
boxes as float32 (N, 4) ``x0, y0, x1, y1`` in the original image's pixels and int64 labels in
``0..K-1``. Boxes reaching outside their image are clipped to it; boxes left thinner than
``MIN_SIDE`` pixels are dropped; both are counted and reported once per data set with a warning.
Train and val splits are required; a missing test split is the val split (see ``source.notes``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from visattn.data.base import (
    DECODE_ERRORS,
    IMAGE_EXTENSIONS,
    SPLITS,
    DataError,
    jpeg_truncated,
    over_pixel_limit,
    read_label_text,
)
from visattn.errors import ConfigError
from visattn.safe_yaml import load_yaml

MIN_SIDE = 1.0  # pixels: a clipped box thinner than this is degenerate and dropped
MAX_CLASSES = 10_000  # class ids a YOLO label may use without class names (LVIS has 1,203 classes)
CLIP_TOLERANCE = 0.5  # pixels: boxes out of their image by less are clipped without counting (rounding)
COCO_LAYOUT = ("Expected COCO layout: <root>/annotations/instances_{train,val[,test]}.json with images in "
               "<root>/images/<split>/ (or <root>/<split>/, or the paths in the JSON).")
YOLO_LAYOUT = ("Expected YOLO layout: <root>/images/{train,val[,test]}/*.jpg|png and <root>/labels/<split>/<stem>.txt "
               "with lines 'class cx cy w h' normalised to 0..1; class names in <root>/data.yaml (names) or "
               "<root>/classes.txt (one per line).")


@dataclass(frozen=True, eq=False)
class DetectionRecord:
    """One image on disk and its annotations."""

    path: Path
    boxes: np.ndarray  # (N, 4) float32 x0, y0, x1, y1 in this image's pixels
    labels: np.ndarray  # (N,) int64 in 0..K-1
    image_id: int
    width: int
    height: int


@dataclass
class DetectionSource:
    """What a reader returns."""

    name: str
    class_names: list[str]
    splits: dict[str, list[DetectionRecord]]
    clipped_boxes: int = 0
    dropped_boxes: int = 0
    skipped: list[Path] = field(default_factory=list)  # missing or unreadable images left out
    notes: list[str] = field(default_factory=list)


class _BoxFixer:
    """Clips boxes to their image and drops degenerate ones, counting both for one summary warning."""

    def __init__(self, name: str) -> None:
        self.name, self.clipped, self.dropped, self.example = name, 0, 0, ""

    def __call__(self, boxes: np.ndarray, labels: np.ndarray, *, width: int, height: int,
                 where: str) -> tuple[np.ndarray, np.ndarray]:
        if len(boxes) == 0:
            return boxes.reshape(0, 4).astype(np.float32), labels.astype(np.int64)
        limit = np.array([width, height, width, height], np.float64)
        clipped = np.clip(boxes, 0.0, limit)  # (N, 4)
        moved = np.abs(clipped - boxes).max(axis=1) > CLIP_TOLERANCE  # (N,)
        keep = ((clipped[:, 2] - clipped[:, 0]) >= MIN_SIDE) & ((clipped[:, 3] - clipped[:, 1]) >= MIN_SIDE)
        self.clipped += int((moved & keep).sum())
        self.dropped += int((~keep).sum())
        if (moved | ~keep).any() and not self.example:
            self.example = where
        return clipped[keep].astype(np.float32), labels[keep].astype(np.int64)

    def report(self, source: DetectionSource) -> None:
        source.clipped_boxes, source.dropped_boxes = self.clipped, self.dropped
        if self.clipped or self.dropped:
            warnings.warn(f"{self.name}: clipped {self.clipped} box(es) reaching outside their image and dropped "
                          f"{self.dropped} degenerate box(es) (thinner than {MIN_SIDE:g} px after clipping), "
                          f"first in {self.example}.", stacklevel=3)


def image_size(path: Path, owner: str) -> tuple[int, int]:
    """(width, height) from the file header; DataError naming the file and the reason if it cannot be read.

    Images over ``Image.MAX_IMAGE_PIXELS`` are refused (``over_pixel_limit``); a truncated JPEG, which OpenCV
    would decode half grey, is refused too (``check_complete``).
    """
    try:
        with Image.open(path) as im:
            size, too_big = im.size, over_pixel_limit(im)
    except DECODE_ERRORS as err:
        raise DataError(f"{owner}: cannot read image file {path} ({type(err).__name__}: {err}).") from None
    if too_big:
        raise DataError(f"{owner}: cannot read image file {path} ({too_big}).")
    check_complete(path, owner)
    return size


def check_complete(path: Path, owner: str) -> None:
    """DataError naming a truncated JPEG (see ``jpeg_truncated``)."""
    why = jpeg_truncated(path)
    if why is not None:
        raise DataError(f"{owner}: cannot read image file {path} (truncated: {why}).")


def decode_image(path: Path) -> np.ndarray | None:
    """RGB uint8 (H, W, 3), EXIF orientation ignored (annotations refer to the stored pixels); None if undecodable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _require_root(root: str | os.PathLike[str] | None, name: str, layout: str) -> Path:
    if root is None:
        raise DataError(f"data set {name!r} needs data_dir. {layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{name}: data_dir {path} is not a folder. {layout}")
    return path


def _fill_test(source: DetectionSource, present: dict[str, Any]) -> None:
    for split in SPLITS:
        if split not in present:
            if split != "test":
                raise DataError(f"{source.name}: no {split} split found.")
            source.splits["test"] = source.splits["val"]
            source.notes.append("no test split: the test split is the val split")


# --------------------------------------------------------------------- COCO
def _coco_file(root: Path, split: str) -> Path | None:
    exact = root / "annotations" / f"instances_{split}.json"
    if exact.is_file():
        return exact
    found = sorted((root / "annotations").glob(f"instances_{split}*.json"))  # e.g. instances_val2017.json
    if len(found) > 1:
        raise DataError(f"coco: several annotation files for split {split!r}: {', '.join(map(str, found))}.")
    return found[0] if found else None


def _load_json(path: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads(read_label_text(path, name))
    except ValueError as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"{name}: cannot read annotation file {path} ({err}).") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise DataError(f"{name}: {path} is not a COCO instances file (needs lists 'images' and 'categories').")
    if not isinstance(data.get("annotations"), list):
        # Without the key every image would silently be background: refused for every split (training on it
        # learns nothing, evaluating on it measures nothing). Images without objects need "annotations": [].
        what = "has no 'annotations' list" if "annotations" not in data else "has an 'annotations' that is not a list"
        raise DataError(f"{name}: {path} {what}; every split needs one (use \"annotations\": [] for a split whose "
                        "images have no objects). Image-info files without annotations (e.g. COCO test-dev) cannot "
                        "be trained or evaluated on.")
    return data


def _confined(root: Path, file_name: str, where: str, name: str) -> None:
    """Refuse a ``file_name`` that leads outside the data root (``..`` or an absolute path elsewhere).

    The check is lexical, so a symlinked image folder inside the root still works.
    """
    base = Path(os.path.normpath(root.absolute()))
    if not Path(os.path.normpath(base / file_name)).is_relative_to(base):
        raise DataError(f"{name}: file_name {file_name!r} in {where} points outside the data root {root}; "
                        "image paths must stay inside it.")


def read_coco(root: str | os.PathLike[str] | None, *, skip_bad_images: bool = False,
              name: str = "coco") -> DetectionSource:
    """COCO instances JSON per split; category ids are mapped to 0..K-1 in sorted id order; crowd boxes ignored."""
    root = _require_root(root, name, COCO_LAYOUT)
    files = {s: f for s in SPLITS if (f := _coco_file(root, s)) is not None}
    if "train" not in files or "val" not in files:
        raise DataError(f"{name}: no annotations/instances_{'train' if 'train' not in files else 'val'}.json "
                        f"in {root}. {COCO_LAYOUT}")
    fixer = _BoxFixer(name)
    source = DetectionSource(name=name, class_names=[], splits={})
    categories: list[tuple[int, str]] | None = None
    for split, ann_file in files.items():
        data = _load_json(ann_file, name)
        try:
            cats = sorted((int(c["id"]), str(c["name"])) for c in data["categories"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{name}: malformed 'categories' in {ann_file} (need id and name).") from None
        if categories is None:
            categories = cats
        elif cats != categories:
            raise DataError(f"{name}: categories of {ann_file} differ from those of {files['train']}.")
        index = {cid: k for k, (cid, _) in enumerate(cats)}
        tag = ann_file.stem.removeprefix("instances_")  # "train", or e.g. "train2017"
        per_image: dict[int, list[tuple[list[float], int]]] = {}
        images: dict[int, dict[str, Any]] = {}
        for img in data["images"]:
            try:
                image_id = int(img["id"])
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{name}: image entry without an int 'id' in {ann_file}: {img!r}.") from None
            if image_id in images:
                raise DataError(f"{name}: duplicate image id {image_id} in {ann_file} (file_names "
                                f"{images[image_id].get('file_name')!r} and {img.get('file_name')!r}).")
            images[image_id] = img
        for ann in data["annotations"]:
            ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
            where = f"{ann_file} (annotation id {ann_id})"
            try:
                image_id, cat, bbox = int(ann["image_id"]), ann["category_id"], ann["bbox"]
                x, y, w, h = (float(v) for v in bbox)
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{name}: malformed annotation in {where}: need image_id, category_id and "
                                "bbox [x, y, width, height].") from None
            if not all(map(math.isfinite, (x, y, w, h))):
                raise DataError(f"{name}: non-finite bbox {bbox} in {where}.")
            if cat not in index:
                raise DataError(f"{name}: unknown category id {cat!r} in {where}; "
                                f"known ids: {', '.join(str(c) for c, _ in cats)}.")
            if image_id not in images:
                raise DataError(f"{name}: annotation refers to unknown image id {image_id} in {where}.")
            if ann.get("iscrowd", 0):
                continue
            per_image.setdefault(image_id, []).append(([x, y, x + w, y + h], index[cat]))
        records = []
        for image_id, img in images.items():
            file_name = str(img.get("file_name", ""))
            _confined(root, file_name, f"{ann_file} (image id {image_id})", name)
            candidates = [Path(file_name)] if Path(file_name).is_absolute() else [
                root / "images" / tag / file_name, root / tag / file_name, root / "images" / file_name,
                root / file_name]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                if skip_bad_images:
                    source.skipped.append(candidates[0])
                    continue
                raise DataError(f"{name}: missing image file {candidates[0]} (image id {image_id}, "
                                f"file_name {file_name!r} in {ann_file}).")
            try:
                try:
                    width, height = int(img["width"]), int(img["height"])
                except (KeyError, TypeError, ValueError):
                    width, height = image_size(path, name)
                else:
                    image_size(path, name)  # the header: pixel limit and truncation, whatever the JSON says
            except DataError:
                if skip_bad_images:
                    source.skipped.append(path)
                    continue
                raise
            anns = per_image.get(image_id, [])
            boxes = np.array([a[0] for a in anns], np.float64).reshape(-1, 4)  # (N, 4)
            labels = np.array([a[1] for a in anns], np.int64)
            boxes, labels = fixer(boxes, labels, width=width, height=height, where=f"{ann_file} image {path.name}")
            records.append(DetectionRecord(path, boxes, labels, image_id, width, height))
        source.splits[split] = records
    source.class_names = [n for _, n in categories or []]
    _fill_test(source, files)
    fixer.report(source)
    return source


# --------------------------------------------------------------------- YOLO
def _yolo_names(root: Path) -> tuple[list[str], Path] | None:
    """The class names and the file that gives them (data.yaml, dataset.yaml or classes.txt), or None."""
    for yaml_name in ("data.yaml", "dataset.yaml"):
        path = root / yaml_name
        if path.is_file():
            try:
                names = (load_yaml(read_label_text(path, "yolo"), source=str(path)) or {}).get("names")
            except (ConfigError, AttributeError) as err:
                raise DataError(f"yolo: cannot read {path} ({err}).") from None
            if isinstance(names, dict):
                names = [names[k] for k in sorted(names)]
            if not isinstance(names, list) or not names:
                raise DataError(f"yolo: {path} needs 'names', a list (or an index -> name mapping) of class names.")
            return [str(n) for n in names], path
    path = root / "classes.txt"
    if path.is_file():
        return [line.strip() for line in read_label_text(path, "yolo").splitlines() if line.strip()], path
    return None


def _parse_yolo_file(path: Path, names: tuple[list[str], Path] | None) -> tuple[np.ndarray, np.ndarray]:
    """cx, cy, w, h normalised (N, 4) float64 and class ids (N,) of one label file (validated): a class id must be
    one of the names' (``names``: the names and their file), else below ``MAX_CLASSES``."""
    rows, classes = [], []
    for lineno, line in enumerate(read_label_text(path, "yolo").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            values = [float(v) for v in parts]
        except ValueError:
            values = []
        if len(values) != 5 or not all(map(math.isfinite, values)) or values[0] != int(values[0]):
            raise DataError(f"yolo: malformed line {lineno} in {path}: {line.strip()!r}; expected "
                            "'class cx cy w h' (an int class id and 4 numbers normalised to 0..1).")
        cls = int(values[0])
        if names is not None and not 0 <= cls < len(names[0]):
            raise DataError(f"yolo: unknown class id {cls} on line {lineno} of {path}; the class names in "
                            f"{names[1]} give ids 0..{len(names[0]) - 1}.")
        if not 0 <= cls < MAX_CLASSES:
            raise DataError(f"yolo: class id {cls} on line {lineno} of {path} is not one of the 0..{MAX_CLASSES - 1} "
                            "visattn accepts without class names; list the names in data.yaml ('names') or "
                            "classes.txt (one per line), or fix the line.")
        rows.append(values[1:])
        classes.append(cls)
    return np.array(rows, np.float64).reshape(-1, 4), np.array(classes, np.int64)


def read_yolo(root: str | os.PathLike[str] | None, *, skip_bad_images: bool = False) -> DetectionSource:
    """YOLO txt labels; a missing or empty label file is an image without objects."""
    root = _require_root(root, "yolo", YOLO_LAYOUT)
    names = _yolo_names(root)
    present = [s for s in SPLITS if (root / "images" / s).is_dir()]
    if "train" not in present or "val" not in present:
        raise DataError(f"yolo: no images/{'train' if 'train' not in present else 'val'}/ folder in {root}. "
                        f"{YOLO_LAYOUT}")
    fixer = _BoxFixer("yolo")
    source = DetectionSource(name="yolo", class_names=[], splits={})
    raw: dict[str, list[tuple[Path, int, int, int, np.ndarray, np.ndarray]]] = {}
    for split in present:
        files = sorted(p for p in (root / "images" / split).iterdir()
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())  # never a FIFO or device
        raw[split] = []
        for position, path in enumerate(files, start=1):
            try:
                size = image_size(path, "yolo")
            except DataError:
                if skip_bad_images:
                    source.skipped.append(path)
                    continue
                raise
            label_file = root / "labels" / split / f"{path.stem}.txt"
            if label_file.is_file():
                boxes, classes = _parse_yolo_file(label_file, names)
            else:
                boxes, classes = np.zeros((0, 4)), np.zeros(0, np.int64)
            raw[split].append((path, position, *size, boxes, classes))
    if names is None:  # no names given: ids 0..max (max < MAX_CLASSES)
        top = max((int(c.max()) for items in raw.values() for *_, c in items if len(c)), default=0)
        class_names = [str(k) for k in range(top + 1)]
    else:
        class_names = names[0]
    for split, items in raw.items():
        records = []
        for path, position, width, height, cxcywh, classes in items:
            scale = np.array([width, height, width, height], np.float64)
            cx, cy, w, h = (cxcywh * scale).T  # each (N,)
            boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)  # (N, 4)
            boxes, labels = fixer(boxes, classes, width=width, height=height, where=f"{path}")
            records.append(DetectionRecord(path, boxes, labels, position, width, height))
        source.splits[split] = records
    source.class_names = class_names
    _fill_test(source, raw)
    fixer.report(source)
    return source


def coco_to_yolo(*, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write the COCO data set at ``src`` as YOLO txt at ``dst`` (images hard-linked when possible, else copied)."""
    source = read_coco(src)
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise DataError(f"coco_to_yolo: destination {dst} is not empty.")
    splits = [s for s in SPLITS if not (s == "test" and source.splits["test"] is source.splits["val"])]
    for split in splits:
        (dst / "images" / split).mkdir(parents=True, exist_ok=True)
        (dst / "labels" / split).mkdir(parents=True, exist_ok=True)
        for rec in source.splits[split]:
            target = dst / "images" / split / rec.path.name
            if target.exists():
                raise DataError(f"coco_to_yolo: two images of split {split!r} are named {rec.path.name}.")
            try:
                os.link(rec.path, target)
            except OSError:
                shutil.copyfile(rec.path, target)
            scale = np.array([rec.width, rec.height], np.float64)
            centre = (rec.boxes[:, :2] + rec.boxes[:, 2:]) / 2 / scale  # (N, 2)
            extent = (rec.boxes[:, 2:] - rec.boxes[:, :2]) / scale  # (N, 2)
            lines = [f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}"
                     for c, (x, y), (w, h) in zip(rec.labels.tolist(), centre.tolist(), extent.tolist(), strict=True)]
            (dst / "labels" / split / f"{rec.path.stem}.txt").write_text("".join(line + "\n" for line in lines))
    (dst / "data.yaml").write_text("names:\n" + "".join(f"  - {json.dumps(n)}\n" for n in source.class_names))
    return dst
