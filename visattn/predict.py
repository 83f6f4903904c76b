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


def predict_folder(model_path: str | Path, images: str | Path, *, batch_size: int = 16,
                   out_csv: str | Path | None = None) -> list[dict[str, Any]]:
    """Class and probability for every image under ``images``; ``model_path``: a .onnx file or an export folder."""
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    spec_path = folder / "model.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{spec_path} not found: predict needs the model.json that tools/export.py writes")
    spec = json.loads(spec_path.read_text())
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
