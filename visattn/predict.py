"""Inference from an exported file (ONNX through onnxruntime, or an export folder through ``visattn.load``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visattn.data.base import DECODE_ERRORS, IMAGE_EXTENSIONS, DataError, over_pixel_limit, pil_to_rgb
from visattn.data.datamodule import image_files
from visattn.data.detect.transforms import letterbox, unletterbox
from visattn.data.transforms import build_eval_transform
from visattn.errors import ConfigError, ExportError
from visattn.export import read_export_values
from visattn.extras import require
from visattn.rundir import check_output_dir, check_output_file, claim_output_dir, write_atomic

CLASSIFY_FIELDS = ["image", "class", "index", "probability"]


def list_images(folder: str | Path) -> list[Path]:
    """The image files under ``folder``, sorted; only regular files (a FIFO or device named ``*.png`` would block
    or never end when read)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {folder}")
    return files


def open_rgb(path: Path) -> Image.Image:
    """An image file as 8-bit RGB (16-bit grey scaled, 32-bit/float refused: see ``pil_to_rgb``; over
    ``PIL.Image.MAX_IMAGE_PIXELS`` refused)."""
    try:
        with Image.open(path) as im:
            too_big = over_pixel_limit(im)
            if too_big:
                raise DataError(f"cannot decode image {path}: {too_big}")
            im.load()
            return Image.fromarray(pil_to_rgb(im, path))
    except (DataError, ValueError):
        raise
    except DECODE_ERRORS as err:  # DecompressionBombError: over twice PIL.Image.MAX_IMAGE_PIXELS
        raise DataError(f"cannot decode image {path}: {type(err).__name__}: {err}") from None


def _is_prediction_csv(head: bytes) -> bool:
    """A CSV that ``predict`` wrote: its first line is one of the two headers it writes."""
    first = head.split(b"\n", 1)[0].strip().decode("utf-8", errors="replace")
    return first in (",".join(CLASSIFY_FIELDS), ",".join(DETECTION_FIELDS))


def check_outputs(*, batch_size: int, out_csv: str | Path | None, save_dir: str | Path | None,
                  images: str | Path | None = None) -> None:
    """Refuse a bad ``batch_size``, ``out_csv`` or ``save_dir`` before any model is loaded or image read.

    ``out_csv`` must name a file (an existing directory or ``DIR/`` is refused: give ``DIR/predictions.csv``)
    that is not an input and not inside the ``images`` folder, and, if it exists, a CSV predict wrote.
    ``save_dir`` must not be, hold or be inside ``images``, and must be new, empty, or a folder predict made
    (its ``.visattn-output`` marker): a user's own files are never overwritten. Missing parent folders are created
    when the results are written.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    inputs = [images] if images is not None else []
    if out_csv is not None:
        check_output_file(out_csv, flag="--out", inputs=inputs, ours=_is_prediction_csv)
    if save_dir is not None:
        check_output_dir(save_dir, flag="--save-dir", inputs=inputs)


def write_csv(path: str | Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    """Write through a temporary file, so that a failure never leaves a half-written CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, text.getvalue())


def onnx_runner(model_path: Path) -> tuple[Any, int | None]:
    """An onnxruntime session and its fixed batch size (None when the export has a dynamic batch dimension)."""
    ort = require("onnxruntime", purpose="predicting with an ONNX model")

    if not model_path.is_file():
        raise FileNotFoundError(f"ONNX model {model_path} not found (export it with visattn export --format onnx)")
    try:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...): a truncated/foreign file
        detail = " ".join(str(err).split())[:300]
        raise ExportError(f"cannot load ONNX model {model_path} (truncated, corrupt or not an ONNX file?): "
                          f"{detail}") from None
    batch = session.get_inputs()[0].shape[0]  # an int for a static export, a name ("batch") for a dynamic one
    return session, (batch if isinstance(batch, int) and batch > 0 else None)


def in_fixed_batches(run: Callable[[np.ndarray], Any], fixed: int | None) -> Callable[[np.ndarray], Any]:
    """Feed a static-batch graph exactly ``fixed`` images per call (default exports: 1).

    The last piece is padded by repeating its last image; the padded results are dropped. ``run``
    returns one result per image (an array with a leading batch axis, or a list).
    """
    if fixed is None:
        return run

    def run_fixed(x: np.ndarray) -> Any:
        parts = []
        for start in range(0, len(x), fixed):
            piece = x[start:start + fixed]  # (k, 3, S, S), k <= fixed
            pad = np.repeat(piece[-1:], fixed - len(piece), axis=0)  # (fixed - k, 3, S, S)
            parts.append(run(np.concatenate([piece, pad]))[: len(piece)])
        return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else [r for p in parts for r in p]

    return run_fixed


def preprocess_files(paths: list[Path], spec: dict[str, Any]) -> np.ndarray:
    """The run's own eval transform on image files, decoded as validation decodes them: (n, 3, S, S) float32.

    One preprocessing for validation, evaluate and predict: ``image_files`` + ``build_eval_transform`` rebuilt
    from model.json (img_size, mean, std), so a prediction sees exactly the input validation saw.
    """
    size = spec["img_size"]
    transform = build_eval_transform(img_size=size, mean=spec["mean"], std=spec["std"])
    files = image_files(list(paths), np.zeros(len(paths), np.int64), img_size=size, transform=transform)
    return np.stack([files[i][0].numpy() for i in range(len(files))])  # (n, 3, S, S)


def preprocess(path: Path, spec: dict[str, Any]) -> np.ndarray:
    """``preprocess_files`` of one image: (3, S, S) float32."""
    return preprocess_files([path], spec)[0]


def read_spec(model_path: Path) -> dict[str, Any]:
    """The export's model.json, checked (``visattn.export.read_export_values``: valid, and as report.json
    recorded)."""
    folder = model_path if model_path.is_dir() else model_path.parent
    if not (folder / "model.json").exists():
        raise FileNotFoundError(f"{folder / 'model.json'} not found: predict needs the model.json that visattn export "
                                "writes")
    return read_export_values(folder)


def predict_folder(model_path: str | Path, images: str | Path, *, batch_size: int = 16,
                   out_csv: str | Path | None = None, save_dir: str | Path | None = None,
                   conf_threshold: float | None = None) -> list[dict[str, Any]]:
    """Predict every image under ``images``; ``model_path``: a .onnx file or an export folder.

    Classification: one row per image (class, probability). Detection: one row per box (class, score,
    x0, y0, x1, y1 in the original image's pixels) and, with ``save_dir``, each image with its boxes drawn.
    ``conf_threshold`` (detection) keeps boxes scoring at least this; an ONNX file cannot go below the
    threshold it was exported with. ``out_csv`` names a file (not a directory), checked with ``batch_size``
    before anything runs. A static-batch ONNX file (the default export) is fed its own batch size at a time.
    """
    model_path = Path(model_path)
    check_outputs(batch_size=batch_size, out_csv=out_csv, save_dir=save_dir, images=images)
    spec = read_spec(model_path)
    list_images(images)  # a missing or empty folder fails before the model is loaded
    if spec.get("task") == "detect":
        return predict_detection_folder(model_path, images, spec=spec, batch_size=batch_size, out_csv=out_csv,
                                        save_dir=save_dir, conf_threshold=conf_threshold)
    if model_path.suffix == ".onnx":
        session, fixed = onnx_runner(model_path)
        run = in_fixed_batches(lambda x: session.run(None, {"x": x})[0], fixed)
    elif model_path.is_dir():
        import torch

        from visattn.export import load

        model = load(model_path)
        run = lambda x: model(torch.from_numpy(x)).detach().numpy()  # noqa: E731
    else:
        raise ConfigError(f"unsupported model file {model_path}: give a .onnx file or an export folder")
    files = list_images(images)
    names = spec.get("class_names") or [str(i) for i in range(spec["num_classes"])]
    rows = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        logits = run(preprocess_files(chunk, spec))  # (n, classes)
        if logits.ndim != 2 or logits.shape[1] != len(names):
            raise ExportError(f"{model_path} gives {tuple(logits.shape)} outputs for {len(chunk)} image(s), but its "
                             f"model.json says {len(names)} classes: the export's files do not belong together; "
                             "export the run again")
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        for path, row in zip(chunk, probs, strict=True):
            best = int(row.argmax())
            rows.append({"image": str(path), "class": names[best], "index": best, "probability": float(row[best])})
    if out_csv is not None:
        write_csv(out_csv, rows, CLASSIFY_FIELDS)
    return rows


DETECTION_FIELDS = ["image", "class", "index", "score", "x0", "y0", "x1", "y1"]
_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]


def detection_runner(model_path: Path, spec: dict[str, Any], conf_threshold: float) -> Any:
    """A function: normalised (n, 3, S, S) float32 -> per image (boxes (K, 4), scores (K,), labels (K,)) numpy."""
    if model_path.suffix == ".onnx":
        session, fixed = onnx_runner(model_path)

        def run(x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            _, detections = session.run(None, {"x": x})  # (K, 7): batch, x0, y0, x1, y1, score, class
            out = []
            for image in range(len(x)):
                rows = detections[(detections[:, 0] == image) & (detections[:, 5] >= conf_threshold)]
                rows = rows[np.argsort(-rows[:, 5], kind="stable")][: spec.get("max_det", 100)]
                out.append((rows[:, 1:5], rows[:, 5], rows[:, 6].astype(np.int64)))
            return out

        return in_fixed_batches(run, fixed)
    if model_path.is_dir():
        import torch

        from visattn.export import load
        from visattn.models.detector import postprocess

        model = load(model_path)

        def run_torch(x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            with torch.no_grad():
                results = postprocess(model(torch.from_numpy(x)), conf_threshold=conf_threshold,
                                      iou_threshold=spec.get("iou_threshold", 0.6), max_det=spec.get("max_det", 100))
            return [(r["boxes"].numpy(), r["scores"].numpy(), r["labels"].numpy()) for r in results]

        return run_torch
    raise ConfigError(f"unsupported model file {model_path}: give a .onnx file or an export folder")


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
    exported_at = float(spec.get("conf_threshold", 0.25))
    threshold = exported_at if conf_threshold is None else float(conf_threshold)
    if not 0.0 <= threshold < 1.0:
        raise ConfigError(f"conf_threshold must be in [0, 1), got {threshold}")
    if model_path.suffix == ".onnx" and threshold < exported_at:
        raise ConfigError(f"conf_threshold {threshold} is below the {exported_at} this ONNX file was exported with "
                         "(its NMS drops lower scores); use the export folder (safetensors) for lower thresholds")
    run = detection_runner(model_path, spec, threshold)
    files = list_images(images)
    root = Path(images)
    names = spec.get("class_names") or [str(i) for i in range(spec["num_classes"])]
    size = spec["img_size"]
    mean, std = np.array(spec["mean"], np.float32), np.array(spec["std"], np.float32)
    save = (claim_output_dir(save_dir, flag="--save-dir", made_by="visattn predict", inputs=[images])
            if save_dir is not None else None)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        originals, batch = [], []
        for path in chunk:
            image = open_rgb(path)
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
                drawn = io.BytesIO()
                draw_detections(image, boxes, scores, labels, names).save(drawn, format="PNG")
                write_atomic(target, drawn.getvalue())  # replaces a link itself, never writes through it
    if out_csv is not None:
        write_csv(out_csv, rows, DETECTION_FIELDS)
    return rows
