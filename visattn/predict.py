"""Inference: one path from images to predictions, for ``visattn predict`` and ``visattn.load`` alike.

A backend runs a normalised (n, C, S, S) float32 batch through a model of any format: an ONNX file (onnxruntime),
a TorchScript file or an export folder's safetensors weights (torch), or a module in memory (``visattn.api``).
:func:`predict_images` decodes images as validation does, preprocesses them (the run's eval transform, or the
detector's letterbox), runs a backend and postprocesses its output (softmax top-k, or NMS with boxes in the original
image's pixels), so the command line and the Python API give the same numbers for the same image.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visattn.data.base import DECODE_ERRORS, IMAGE_EXTENSIONS, DataError, over_pixel_limit, pil_to_rgb
from visattn.data.datamodule import image_files
from visattn.data.detect.transforms import letterbox, unletterbox
from visattn.data.transforms import build_eval_transform
from visattn.errors import BadArgumentError, BadValueError, ConfigError, ExportError
from visattn.export import read_export_values
from visattn.extras import require
from visattn.rundir import check_output_dir, check_output_file, claim_output_dir, write_atomic

CLASSIFY_FIELDS = ["image", "class", "index", "probability"]  # top-1; the k-th class adds class_k, index_k, ...
DETECTION_FIELDS = ["image", "class", "index", "score", "x0", "y0", "x1", "y1"]
TORCHSCRIPT_FILE = "model.torchscript.pt"  # the name visattn export gives its TorchScript file
FOLDER_MODELS = ("model.safetensors", TORCHSCRIPT_FILE, "model.onnx")  # an export folder's model, first found
MODEL_CHOICES = (f"an export folder (model.json beside {', '.join(FOLDER_MODELS)}), a .onnx file, or a TorchScript "
                 f".pt file ({TORCHSCRIPT_FILE}), as visattn export writes them")
ImageLike = str | Path | Image.Image | np.ndarray


@dataclass
class Classification:
    """One image's prediction: the top class and the ``top`` (name, probability) pairs, best first."""

    image: str | None
    label: str
    index: int
    score: float
    top: list[tuple[str, float]]


@dataclass
class Detections:
    """One image's boxes: ``boxes`` (K, 4) x0, y0, x1, y1 in the original image's pixels; ``scores`` (K,);
    ``indices`` (K,) class indices and ``labels`` their names."""

    image: str | None
    boxes: np.ndarray
    scores: np.ndarray
    indices: np.ndarray
    labels: list[str]


# ------------------------------------------------------------------------------------------------ images
def list_images(images: str | Path) -> list[Path]:
    """An image file, or the image files under a folder (recursively), sorted; only regular files (a FIFO or
    device named ``*.png`` would block or never end when read)."""
    path = Path(images)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise DataError(f"{path} is not an image file (its suffix {path.suffix or '(none)'!r} is not one of "
                            f"{', '.join(sorted(IMAGE_EXTENSIONS))}); give an image file or a folder of images")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"image not found: {path} is neither an image file nor a folder of images")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {path}")
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


def expand_images(images: Any) -> list[tuple[str | None, Any]]:
    """``(name, item)`` pairs: a folder becomes its image files (sorted), a path its file, in-memory images None."""
    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        images = [images]
    if not isinstance(images, Iterable):
        raise BadArgumentError(f"images must be a path, a folder, a PIL image, an (H, W, 3) array or a list of "
                               f"them, got {type(images).__name__}")
    items: list[tuple[str | None, Any]] = []
    for item in images:
        if isinstance(item, (str, Path)):
            items += [(str(p), p) for p in list_images(item)]
        elif isinstance(item, (Image.Image, np.ndarray)):
            items.append((None, item))
        else:
            raise BadArgumentError(f"cannot predict on a {type(item).__name__}: give a path, a folder, a PIL image "
                                   "or an (H, W, 3) uint8 RGB array")
    if not items:
        raise BadValueError("no images given")
    return items


def to_rgb(item: Any, *, img_size: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB. With ``img_size``, a file is decoded as validation decodes classification images for a
    model of that input size (``image_files``: a JPEG DCT-downscaled while decoding to no less than twice it)."""
    if isinstance(item, Path):
        if img_size is not None:
            return image_files([item], np.zeros(1, np.int64), img_size=img_size).raw(0)
        return np.asarray(open_rgb(item))
    if isinstance(item, Image.Image):
        return pil_to_rgb(item, "a PIL image")
    array = np.asarray(item)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise BadValueError(f"an image array must be (H, W, 3) uint8 RGB, got {array.shape} {array.dtype}")
    return array


def classify_batch(rgb: Sequence[np.ndarray], spec: dict[str, Any]) -> np.ndarray:
    """The run's own eval transform (``build_eval_transform`` from model.json's img_size, mean, std), the one
    validation uses: (n, 3, S, S) float32."""
    transform = build_eval_transform(img_size=spec["img_size"], mean=spec["mean"], std=spec["std"])
    return np.stack([transform(image=image)["image"].numpy() for image in rgb])  # (n, 3, S, S)


def detect_batch(rgb: Sequence[np.ndarray], spec: dict[str, Any]) -> np.ndarray:
    """Each image letterboxed to the detector's square input and normalised: (n, 3, S, S) float32."""
    mean, std = np.array(spec["mean"], np.float32), np.array(spec["std"], np.float32)
    batch = []
    for image in rgb:
        boxed, _ = letterbox(image, np.zeros((0, 4), np.float32), size=spec["img_size"])  # (S, S, 3) uint8
        batch.append(((boxed.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))  # (3, S, S)
    return np.stack(batch)


def preprocess_files(paths: list[Path], spec: dict[str, Any]) -> np.ndarray:
    """Classification image files decoded and transformed as validation does: (n, 3, S, S) float32."""
    return classify_batch([to_rgb(Path(p), img_size=spec["img_size"]) for p in paths], spec)


def preprocess(path: Path, spec: dict[str, Any]) -> np.ndarray:
    """``preprocess_files`` of one image: (3, S, S) float32."""
    return preprocess_files([path], spec)[0]


# ------------------------------------------------------------------------------------------------ models
def model_file(model_path: str | Path) -> Path:
    """What to load for ``--model``, checked before anything is read: an export folder (its safetensors weights;
    without them its TorchScript or ONNX file), a .onnx or TorchScript .pt file, or model.safetensors (its folder)."""
    path = Path(model_path)
    if path.is_dir():
        if not (path / "model.json").exists():
            if (path / "config.yaml").is_file():
                raise FileNotFoundError(f"--model {path} is a run directory, not an export: export it first "
                                        f"(visattn export --run {path}) and give {path / 'export'}; in Python, "
                                        f"visattn.load({str(path)!r}) predicts from a run directory")
            raise FileNotFoundError(f"--model {path} has no model.json, so it is not an export folder; give "
                                    f"{MODEL_CHOICES}")
        for name in FOLDER_MODELS:
            if (path / name).is_file():
                return path if name == "model.safetensors" else path / name
        raise FileNotFoundError(f"export folder {path} holds no model file ({', '.join(FOLDER_MODELS)}); export the "
                                "run again")
    if not path.is_file():
        raise FileNotFoundError(f"--model {path} not found; give {MODEL_CHOICES}")
    if path.name == "model.safetensors":
        return model_file(path.parent)
    if path.suffix not in (".onnx", ".pt"):
        raise ConfigError(f"--model {path}: cannot predict with a {path.suffix or 'suffix-less'} file; give "
                          f"{MODEL_CHOICES}. A training checkpoint is exported first: visattn export --run <run dir>")
    return path


def read_spec(model_path: str | Path) -> dict[str, Any]:
    """The export's model.json beside ``model_path`` (or in it, for a folder), checked
    (``visattn.export.read_export_values``: valid, and as report.json recorded)."""
    model_path = Path(model_path)
    folder = model_path if model_path.is_dir() else model_path.parent
    if not (folder / "model.json").exists():
        raise FileNotFoundError(f"{folder / 'model.json'} not found: {model_path.name} needs the model.json that "
                                "visattn export writes beside it (its classes, image size and normalisation); give "
                                f"{MODEL_CHOICES}")
    return read_export_values(folder)


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


def load_torchscript(path: Path) -> Any:
    """``torch.jit.load``, or one paragraph saying what the file is instead."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # torch's deprecation notice of TorchScript
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:  # torch's RuntimeError from its zip reader, or a foreign archive's unpickling error
        detail = " ".join(str(err).split())[:160]
        what = ("a torch.save file (a checkpoint or state dict), which holds weights without the code to run them"
                if "constants.pkl" in detail else "truncated, corrupt or not a TorchScript file")
        raise ExportError(f"{path} is not a TorchScript model: {what} ({detail}). Give the {TORCHSCRIPT_FILE} that "
                          "visattn export --format torchscript writes, or its export folder") from None


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


Boxes = tuple[np.ndarray, np.ndarray, np.ndarray]  # per image: boxes (K, 4) x0 y0 x1 y1, scores (K,), labels (K,)


class Backend:
    """A model of one format behind two calls on a normalised (n, C, S, S) float32 batch: ``logits`` (n, classes)
    for a classifier, ``boxes`` (per image, after NMS, in input pixels) for a detector. ``min_conf``: the lowest
    confidence it can report (an ONNX detector's NMS drops what scores below its exported threshold)."""

    min_conf = 0.0

    def __init__(self, spec: dict[str, Any], name: str) -> None:
        self.spec, self.name = spec, name
        self.class_count = int(spec["num_classes"])

    def logits(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def boxes(self, x: np.ndarray, *, conf: float) -> list[Boxes]:
        raise NotImplementedError

    def check_classes(self, got: int, shape: tuple[int, ...], images: int) -> None:
        if got != self.class_count:
            raise ExportError(f"{self.name} gives {shape} outputs for {images} image(s), but its model.json says "
                              f"{self.class_count} classes: the export's files do not belong together; export the "
                              "run again")


class TorchBackend(Backend):
    """An ``nn.Module`` or TorchScript module; a detector's NMS runs here (``visattn.models.detector.postprocess``).
    The input is cast to the module's own dtype (a ``--half`` TorchScript file is float16)."""

    def __init__(self, module: Any, spec: dict[str, Any], name: str) -> None:
        import torch

        super().__init__(spec, name)
        self.module = module
        self.dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)

    def _forward(self, x: np.ndarray) -> Any:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(x).to(self.dtype)).float()

    def logits(self, x: np.ndarray) -> np.ndarray:
        out = self._forward(x)  # (n, classes)
        self.check_classes(out.shape[-1] if out.ndim == 2 else -1, tuple(out.shape), len(x))
        return out.numpy()

    def boxes(self, x: np.ndarray, *, conf: float) -> list[Boxes]:
        from visattn.models.detector import postprocess

        decoded = self._forward(x)  # (n, A, 4 + C)
        self.check_classes(decoded.shape[-1] - 4 if decoded.ndim == 3 else -1, tuple(decoded.shape), len(x))
        found = postprocess(decoded, conf_threshold=conf, iou_threshold=self.spec.get("iou_threshold", 0.6),
                            max_det=self.spec.get("max_det", 100))
        return [(r["boxes"].numpy(), r["scores"].numpy(), r["labels"].numpy().astype(np.int64)) for r in found]


class OnnxBackend(Backend):
    """An ONNX file in onnxruntime, fed its own batch size at a time when static; a detector's NMS is in the graph
    (outputs ``decoded``, ``detections`` (K, 7): batch, x0, y0, x1, y1, score, class)."""

    def __init__(self, path: Path, spec: dict[str, Any]) -> None:
        super().__init__(spec, str(path))
        self.session, self.fixed = onnx_runner(path)
        kind = getattr(self.session.get_inputs()[0], "type", "tensor(float)")
        self.dtype = np.float16 if kind == "tensor(float16)" else np.float32  # a --half export takes float16
        if spec.get("task") == "detect":
            self.min_conf = float(spec.get("conf_threshold", 0.25))

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        return [out.astype(np.float32) for out in self.session.run(None, {"x": x.astype(self.dtype)})]

    def logits(self, x: np.ndarray) -> np.ndarray:
        out = in_fixed_batches(lambda piece: self._run(piece)[0], self.fixed)(x)  # (n, classes)
        self.check_classes(out.shape[-1] if out.ndim == 2 else -1, tuple(out.shape), len(x))
        return out

    def boxes(self, x: np.ndarray, *, conf: float) -> list[Boxes]:
        max_det = self.spec.get("max_det", 100)

        def run(piece: np.ndarray) -> list[Boxes]:
            _, detections = self._run(piece)  # (K, 7)
            out = []
            for image in range(len(piece)):
                rows = detections[(detections[:, 0] == image) & (detections[:, 5] >= conf)]
                rows = rows[np.argsort(-rows[:, 5], kind="stable")][:max_det]
                out.append((rows[:, 1:5], rows[:, 5], rows[:, 6].astype(np.int64)))
            return out

        return in_fixed_batches(run, self.fixed)(x)


def load_backend(model_path: str | Path, spec: dict[str, Any]) -> Backend:
    """The backend of a :func:`model_file` path and its model.json values."""
    path = Path(model_path)
    if path.suffix == ".onnx":
        return OnnxBackend(path, spec)
    if path.suffix == ".pt":
        return TorchBackend(load_torchscript(path), spec, str(path))
    from visattn.export import load

    return TorchBackend(load(path), spec, str(path / "model.safetensors"))


# ------------------------------------------------------------------------------------------------ predicting
def check_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def detection_threshold(conf: float | None, spec: dict[str, Any], *, min_conf: float = 0.0,
                        name: str = "conf") -> float:
    """``conf`` checked (default: the export's threshold); an ONNX file cannot go below the one it was exported
    with (``min_conf``)."""
    threshold = float(spec.get("conf_threshold", 0.25)) if conf is None else conf
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
        raise BadValueError(f"{name} must be a number in [0, 1), got {conf!r}")
    if threshold < min_conf:
        raise ConfigError(f"{name} {threshold} is below the {min_conf} this ONNX file was exported with (its NMS drops "
                          f"lower scores); use the export folder (safetensors) or {TORCHSCRIPT_FILE} for lower "
                          "thresholds, or export again with a lower --conf")
    return float(threshold)


def softmax(logits: np.ndarray) -> np.ndarray:
    probs = np.exp(logits - logits.max(1, keepdims=True))  # (n, classes)
    return probs / probs.sum(1, keepdims=True)


def predict_images(backend: Backend, items: Sequence[tuple[str | None, Any]], *, top_k: int = 5,
                   conf: float | None = None, batch_size: int = 16
                   ) -> Iterator[tuple[Classification | Detections, np.ndarray]]:
    """Each ``(name, item)``'s prediction (see :func:`expand_images`) with the (H, W, 3) RGB image it was made from,
    ``batch_size`` images at a time. Classification: the ``top_k`` classes (at most the class count) by softmax
    probability; files decoded as validation decodes them (JPEG draft). Detection: boxes scoring at least ``conf``
    (default: the export's threshold) in the original image's pixels. Arguments are checked before any image is
    read."""
    spec = backend.spec
    check_count(batch_size, "batch_size")
    detect = spec.get("task") == "detect"
    if detect:
        threshold = detection_threshold(conf, spec, min_conf=backend.min_conf)
    else:
        k = min(check_count(top_k, "top_k"), backend.class_count)
    names = list(spec.get("class_names") or [str(i) for i in range(backend.class_count)])
    size = spec["img_size"]
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        if detect:
            rgb = [to_rgb(item) for _, item in chunk]
            found = backend.boxes(detect_batch(rgb, spec), conf=threshold)
            for (name, _), image, (boxes, scores, labels) in zip(chunk, rgb, found, strict=True):
                boxes = unletterbox(boxes, width=image.shape[1], height=image.shape[0], size=size)  # original px
                yield Detections(image=name, boxes=boxes, scores=scores, indices=labels,
                                 labels=[names[i] if i < len(names) else str(i) for i in labels.tolist()]), image
            continue
        rgb = [to_rgb(item, img_size=size) for _, item in chunk]
        probs = softmax(backend.logits(classify_batch(rgb, spec)))  # (n, classes)
        best = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # (n, k)
        for (name, _), image, row, order in zip(chunk, rgb, probs, best, strict=True):
            top = [(names[i], float(row[i])) for i in order.tolist()]
            yield Classification(image=name, label=top[0][0], index=int(order[0]), score=top[0][1], top=top), image


# ------------------------------------------------------------------------------------------------ visattn predict
def classify_fields(k: int) -> list[str]:
    """The CSV columns of top-``k`` predictions: the best class as ``class, index, probability``, the j-th best as
    ``class_j, probability_j``."""
    return CLASSIFY_FIELDS + [f"{key}_{j}" for j in range(2, k + 1) for key in ("class", "probability")]


def _is_prediction_csv(head: bytes) -> bool:
    """A CSV that ``predict`` wrote: its first line is one of the headers it writes."""
    first = head.split(b"\n", 1)[0].strip().decode("utf-8", errors="replace")
    top_k = 1 + max(0, first.count(",") + 1 - len(CLASSIFY_FIELDS)) // 2
    return first in (",".join(DETECTION_FIELDS), ",".join(classify_fields(top_k)))


def check_outputs(*, batch_size: int, out_csv: str | Path | None, save_dir: str | Path | None,
                  images: str | Path | None = None, top_k: int = 5) -> None:
    """Refuse a bad ``batch_size``, ``top_k``, ``out_csv`` or ``save_dir`` before any model is loaded or image read.

    ``out_csv`` must name a file (an existing directory or ``DIR/`` is refused: give ``DIR/predictions.csv``)
    that is not an input and not inside the ``images`` folder, and, if it exists, a CSV predict wrote.
    ``save_dir`` must not be, hold or be inside ``images``, and must be new, empty, or a folder predict made
    (its ``.visattn-output`` marker): a user's own files are never overwritten. Missing parent folders are created
    when the results are written.
    """
    check_count(batch_size, "--batch-size")
    check_count(top_k, "--top-k")
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


def default_save_dir(model_path: str | Path) -> Path:
    """``runs/<dir>/predictions`` for a model in ``runs/<dir>/export`` (beside export/, which a new export replaces
    whole); ``predictions`` in the model's folder otherwise."""
    path = Path(model_path)
    folder = path if path.is_dir() else path.parent
    return (folder.parent if folder.name == "export" else folder) / "predictions"


def drawing_names(files: Sequence[Path], root: Path) -> dict[Path, Path]:
    """Where each image's drawing goes, relative to the save folder: its path under ``root`` as a PNG (``a.jpg`` ->
    ``a.png``); where two inputs would share one name (``a.png``, ``a.jpg``), the one that is not a PNG keeps its whole
    name (``a.jpg.png``)."""
    plain = {path: path.relative_to(root).with_suffix(".png") for path in files}
    shared = Counter(plain.values())
    return {path: name if shared[name] == 1 or path.suffix.lower() == ".png" else
            path.relative_to(root).with_name(path.name + ".png") for path, name in plain.items()}


_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40)]
MIN_DRAWN_SIDE = 256  # a smaller image is enlarged (a whole factor, nearest neighbour) so its labels can be read


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


def draw_top_k(image: Image.Image, top: Sequence[tuple[str, float]]) -> Image.Image:
    """A copy of ``image`` with its top-k ``probability  name`` lines, best first, on a dark panel at the top left
    (an image under ``MIN_DRAWN_SIDE`` pixels is enlarged first, so that the text is readable)."""
    from PIL import ImageDraw, ImageFont

    factor = -(-MIN_DRAWN_SIDE // max(image.size))  # ceil: 16 px digits -> x16
    drawn = image.convert("RGBA")
    if factor > 1:
        drawn = drawn.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    font = ImageFont.load_default(size=max(12, round(min(drawn.size) / 16)))
    lines = [f"{probability:.2f}  {name}" for name, probability in top]  # "1 0.04" would read as "10.04"
    panel = Image.new("RGBA", drawn.size, (0, 0, 0, 0))
    pen = ImageDraw.Draw(panel)
    bounds = [pen.textbbox((0, 0), line, font=font) for line in lines]  # (left, top, right, bottom) each
    step = max(b[3] for b in bounds) + 2
    pad = max(2, step // 4)
    pen.rectangle((0, 0, max(b[2] for b in bounds) + 2 * pad, step * len(lines) + 2 * pad), fill=(0, 0, 0, 170))
    for row, line in enumerate(lines):
        pen.text((pad, pad + row * step), line, font=font, fill=(255, 255, 255, 255) if row == 0 else
                 (210, 210, 210, 255))
    return Image.alpha_composite(drawn, panel).convert("RGB")


def result_rows(result: Classification | Detections) -> list[dict[str, Any]]:
    """The CSV rows of one image: one row with the top-k classes, or one row per box."""
    if isinstance(result, Classification):
        row: dict[str, Any] = {"image": result.image, "class": result.label, "index": result.index,
                               "probability": result.score}
        for j, (name, probability) in enumerate(result.top[1:], start=2):
            row.update({f"class_{j}": name, f"probability_{j}": probability})
        return [row]
    return [{"image": result.image, "class": label, "index": int(index), "score": float(score),
             **{k: round(v, 2) for k, v in zip(("x0", "y0", "x1", "y1"), box, strict=True)}}
            for box, score, index, label in zip(result.boxes.tolist(), result.scores.tolist(),
                                                result.indices.tolist(), result.labels, strict=True)]


def predict_folder(model_path: str | Path, images: str | Path, *, batch_size: int = 16,
                   out_csv: str | Path | None = None, save_dir: str | Path | None = None,
                   conf_threshold: float | None = None, top_k: int = 5) -> list[dict[str, Any]]:
    """Predict an image file or every image under a folder (``images``) with ``model_path``: an export folder, a
    .onnx file or a TorchScript .pt file (model.json beside it), through :func:`predict_images`.

    Classification: one row per image with its ``top_k`` classes (``classify_fields``). Detection: one row per box
    (class, score, x0, y0, x1, y1 in the original image's pixels). With ``save_dir``, each image is saved as a PNG
    with its predictions drawn (the top-k lines, or the boxes). ``conf_threshold`` (detection) keeps boxes scoring
    at least this; an ONNX file cannot go below the threshold it was exported with. ``out_csv`` names a file (not a
    directory), checked with ``batch_size``, ``top_k`` and ``save_dir`` before anything runs.
    """
    check_outputs(batch_size=batch_size, out_csv=out_csv, save_dir=save_dir, images=images, top_k=top_k)
    model = model_file(model_path)
    spec = read_spec(model)
    detect = spec.get("task") == "detect"
    if detect:  # before the model is loaded
        exported_at = float(spec.get("conf_threshold", 0.25)) if model.suffix == ".onnx" else 0.0
        detection_threshold(conf_threshold, spec, min_conf=exported_at, name="conf_threshold")
    files = list_images(images)  # a missing or empty folder fails before the model is loaded
    backend = load_backend(model, spec)
    root = Path(images) if Path(images).is_dir() else Path(images).parent
    save = (claim_output_dir(save_dir, flag="--save-dir", made_by="visattn predict", inputs=[images])
            if save_dir is not None else None)
    targets = drawing_names(files, root) if save is not None else {}
    names = list(spec.get("class_names") or [str(i) for i in range(spec["num_classes"])])
    rows: list[dict[str, Any]] = []
    for result, image in predict_images(backend, [(str(p), p) for p in files], top_k=top_k, conf=conf_threshold,
                                        batch_size=batch_size):
        rows += result_rows(result)
        if save is not None:
            path = Path(str(result.image))
            if isinstance(result, Detections):
                drawn = draw_detections(Image.fromarray(image), result.boxes, result.scores, result.indices, names)
            else:  # the full image, not the draft-decoded one the model saw
                drawn = draw_top_k(open_rgb(path), result.top)
            target = save / targets[path]
            target.parent.mkdir(parents=True, exist_ok=True)
            data = io.BytesIO()
            drawn.save(data, format="PNG")
            write_atomic(target, data.getvalue())  # replaces a link itself, never writes through it
    if out_csv is not None:
        write_csv(out_csv, rows, DETECTION_FIELDS if detect else classify_fields(min(top_k, len(names))))
    return rows


def format_row(row: dict[str, Any]) -> str:
    """One printed line: ``image<TAB>class p, class p, ...`` (top-k), or ``image<TAB>class<TAB>score<TAB>box``."""
    if "score" in row:
        return (f"{row['image']}\t{row['class']}\t{row['score']:.3f}\t"
                f"{row['x0']:.1f} {row['y0']:.1f} {row['x1']:.1f} {row['y1']:.1f}")
    top, j = [f"{row['class']} {row['probability']:.3f}"], 2
    while f"class_{j}" in row:
        top.append(f"{row[f'class_{j}']} {row[f'probability_{j}']:.3f}")
        j += 1
    return f"{row['image']}\t{', '.join(top)}"
