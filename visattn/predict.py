"""Inference from an exported file (ONNX through onnxruntime, or an export folder through ``visattn.load``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files


def preprocess(path: Path, spec: dict[str, Any]) -> np.ndarray:
    """Resize + normalise as the run's eval transform: (3, S, S) float32."""
    size = spec["img_size"]
    try:
        image = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
    except OSError as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err
    array = np.asarray(image, np.float32) / 255.0  # (S, S, 3)
    array = (array - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
    return array.transpose(2, 0, 1)  # (3, S, S)


def read_spec(model_path: Path) -> dict[str, Any]:
    folder = model_path if model_path.is_dir() else model_path.parent
    spec_path = folder / "model.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} not found: predict needs the model.json that tools/export.py writes")
    return json.loads(spec_path.read_text())


def predict_folder(model_path: str | Path, images: str | Path, *, batch_size: int = 16,
                   out_csv: str | Path | None = None, save_dir: str | Path | None = None,
                   conf_threshold: float | None = None) -> list[dict[str, Any]]:
    """Predict every image under ``images``; ``model_path``: a .onnx file or an export folder.

    Classification: one row per image (class, probability). Detection: one row per box (class, score,
    x0, y0, x1, y1 in the original image's pixels) and, with ``save_dir``, each image with its boxes drawn.
    ``conf_threshold`` (detection) keeps boxes scoring at least this; an ONNX file cannot go below the
    threshold it was exported with.
    """
    model_path = Path(model_path)
    spec = read_spec(model_path)
    if spec.get("task") == "detect":
        return predict_detection_folder(model_path, images, spec=spec, batch_size=batch_size, out_csv=out_csv,
                                        save_dir=save_dir, conf_threshold=conf_threshold)
    if model_path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        run = lambda x: session.run(None, {"x": x})[0]  # noqa: E731
    elif model_path.is_dir():
        import torch

        from visattn.export import load

        model = load(model_path)
        run = lambda x: model(torch.from_numpy(x)).detach().numpy()  # noqa: E731
    else:
        raise ValueError(f"unsupported model file {model_path}: give a .onnx file or an export folder")
    files = list_images(images)
    names = spec.get("class_names") or [str(i) for i in range(spec["num_classes"])]
    rows = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        logits = run(np.stack([preprocess(p, spec) for p in chunk]))  # (n, classes)
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        for path, row in zip(chunk, probs, strict=True):
            best = int(row.argmax())
            rows.append({"image": str(path), "class": names[best], "index": best, "probability": float(row[best])})
    if out_csv is not None:
        with open(out_csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["image", "class", "index", "probability"])
            writer.writeheader()
            writer.writerows(rows)
    return rows


DETECTION_FIELDS = ["image", "class", "index", "score", "x0", "y0", "x1", "y1"]
_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]


def detection_runner(model_path: Path, spec: dict[str, Any], conf_threshold: float) -> Any:
    """A function: normalised (n, 3, S, S) float32 -> per image (boxes (K, 4), scores (K,), labels (K,)) numpy."""
    if model_path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

        def run(x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            _, detections = session.run(None, {"x": x})  # (K, 7): batch, x0, y0, x1, y1, score, class
            out = []
            for image in range(len(x)):
                rows = detections[(detections[:, 0] == image) & (detections[:, 5] >= conf_threshold)]
                rows = rows[np.argsort(-rows[:, 5], kind="stable")][: spec.get("max_det", 100)]
                out.append((rows[:, 1:5], rows[:, 5], rows[:, 6].astype(np.int64)))
            return out

        return run
    if model_path.is_dir():
        import torch

        from visattn.detect import postprocess
        from visattn.export import load

        model = load(model_path)

        def run_torch(x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            with torch.no_grad():
                results = postprocess(model(torch.from_numpy(x)), conf_threshold=conf_threshold,
                                      iou_threshold=spec.get("iou_threshold", 0.6), max_det=spec.get("max_det", 100))
            return [(r["boxes"].numpy(), r["scores"].numpy(), r["labels"].numpy()) for r in results]

        return run_torch
    raise ValueError(f"unsupported model file {model_path}: give a .onnx file or an export folder")


def draw_detections(image: Image.Image, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    names: list[str]) -> Image.Image:
    """A copy of ``image`` with each box outlined and labelled ``name score``."""
    from PIL import ImageDraw

    drawn = image.copy()
    pen = ImageDraw.Draw(drawn)
    width = max(1, round(max(image.size) / 200))
    for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
        colour = _PALETTE[label % len(_PALETTE)]
        pen.rectangle(box, outline=colour, width=width)
        text = f"{names[label] if label < len(names) else label} {score:.2f}"
        left, top, right, bottom = pen.textbbox((box[0], box[1]), text)
        top_y = max(0, box[1] - (bottom - top) - 2)
        pen.rectangle((box[0], top_y, box[0] + right - left + 2, top_y + bottom - top + 2), fill=colour)
        pen.text((box[0] + 1, top_y), text, fill=(255, 255, 255))
    return drawn


def predict_detection_folder(model_path: Path, images: str | Path, *, spec: dict[str, Any], batch_size: int,
                             out_csv: str | Path | None, save_dir: str | Path | None,
                             conf_threshold: float | None) -> list[dict[str, Any]]:
    from visattn.data.detect_transforms import letterbox, unletterbox

    exported_at = float(spec.get("conf_threshold", 0.25))
    threshold = exported_at if conf_threshold is None else float(conf_threshold)
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"conf_threshold must be in [0, 1), got {threshold}")
    if model_path.suffix == ".onnx" and threshold < exported_at:
        raise ValueError(f"conf_threshold {threshold} is below the {exported_at} this ONNX file was exported with "
                         "(its NMS drops lower scores); use the export folder (safetensors) for lower thresholds")
    run = detection_runner(model_path, spec, threshold)
    files = list_images(images)
    root = Path(images)
    names = spec.get("class_names") or [str(i) for i in range(spec["num_classes"])]
    size = spec["img_size"]
    mean, std = np.array(spec["mean"], np.float32), np.array(spec["std"], np.float32)
    save = Path(save_dir) if save_dir is not None else None
    rows: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        originals, batch = [], []
        for path in chunk:
            try:
                image = Image.open(path).convert("RGB")
            except OSError as err:
                raise ValueError(f"cannot decode image {path}: {err}") from err
            originals.append(image)
            boxed, _ = letterbox(np.asarray(image), np.zeros((0, 4), np.float32), size=size)  # (S, S, 3) uint8
            batch.append(((boxed.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))  # (3, S, S)
        for path, image, (boxes, scores, labels) in zip(chunk, originals, run(np.stack(batch)), strict=True):
            boxes = unletterbox(boxes, width=image.width, height=image.height, size=size)  # original pixels
            for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
                rows.append({"image": str(path), "class": names[label] if label < len(names) else str(label),
                             "index": int(label), "score": float(score),
                             **{k: round(v, 2) for k, v in zip(("x0", "y0", "x1", "y1"), box, strict=True)}})
            if save is not None:
                target = (save / path.relative_to(root)).with_suffix(".png")
                target.parent.mkdir(parents=True, exist_ok=True)
                draw_detections(image, boxes, scores, labels, names).save(target)
    if out_csv is not None:
        with open(out_csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=DETECTION_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    return rows
