"""visattn's csp_n + ECA detector against ultralytics' YOLO26n and YOLO11n, trained from scratch on the same images.

What it does, on CPU at 160 px:

1. Writes visattn's built-in ``shapes`` detection set (the one ``configs/detect/shapes_csp_n_eca.yaml`` trains on,
   generated into ``data_cache/`` if absent) also in YOLO layout (``visattn.data.detect.readers.coco_to_yolo``),
   plus the ``data.yaml`` ultralytics reads. Both tools see the same train / val / test images and boxes.
2. Trains in pairs, side by side: one visattn run of the config (its 15 epochs, through visattn's Python API:
   ``visattn.training.prepare`` + ``fit``) on one core and one ultralytics model from its yaml (``yolo26n.yaml``,
   then ``yolo11n.yaml``: from scratch, no weights) on the other, at the same time, each process pinned to its
   core (``os.sched_setaffinity``) with one torch thread; the tools swap cores from pair to pair, and the second
   pair's visattn run uses seed 1. Equal wall time: ultralytics gets its own time budget (``time=``, with which it
   fits its epoch count and LR schedule to the budget after every epoch) set to the training time of the visattn
   run beside it, projected from that run's finished epochs until it ends, then exact. Both tools use batch 16
   and 0 data-loader workers (what visattn picks on one core), otherwise their own defaults: visattn
   ``precision: auto`` (bf16-mixed on a CPU with bf16 matmuls), ultralytics fp32 (``amp=False``; its AMP is CUDA
   only anyway), each tool's own augmentation, optimiser and schedule.
3. Curves: val mAP50-95 against training wall time (each tool's clock from its first training step: ultralytics'
   ``results.csv`` ``time`` column; for visattn a callback beside ``logs/metrics.csv``), read from each tool's own
   per-epoch log AND re-scored by the same evaluation: every epoch's weights (the EMA both tools validate with)
   predict the val images (confidence 0.001, at most 300 boxes, each tool's own validation NMS: visattn IoU 0.6,
   ultralytics 0.7, both multi-label), boxes in original pixels with COCO category ids, scored by pycocotools
   against visattn's COCO annotation files. The final models (each tool's best checkpoint, chosen on val by the
   tool itself) are scored the same way on val and on the 300 test images.
4. Parameters and MACs with ``visattn.count`` at 1x3x160x160 for all three (MACs = multiply-accumulates), and
   ultralytics' own ``model.info(imgsz=160)`` for theirs (its GFLOPs = 2 x MACs, by thop).
5. ONNX batch-1 latency under onnxruntime (1 thread, one core), all models alternating in one process: visattn's
   export (``visattn.export.export_run``: decoding + class-wise NMS in the graph), visattn's network + decoding
   without NMS, and ultralytics' ``export(format="onnx")`` (network + decoding, NMS outside: ultralytics 8.4's
   default ``nms=None`` selects external NMS, so YOLO26n too is validated, predicted and exported with its
   one-to-many head + NMS; its NMS-free one-to-one head is only used with ``nms=False``).
6. Writes ``results.json``, ``curves.csv`` and ``table.md`` into ``--results-dir`` and prints the table.

ultralytics is an optional peer of this benchmark, never a dependency of visattn (it is not in pyproject.toml).
Install it into its own virtual environment that reuses the torch you already have, so it cannot replace it::

    python3 -m venv ~/venv-ultra
    echo "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \\
        > ~/venv-ultra/lib/python3.11/site-packages/_visattn_venv.pth        # torch, visattn's deps: reused
    ~/venv-ultra/bin/pip install --no-deps ultralytics
    ~/venv-ultra/bin/pip install polars psutil ultralytics-thop ultralytics-platform nvidia-ml-py

(``--no-deps`` because ultralytics asks for ``opencv-python``, which would shadow the ``opencv-python-headless``
visattn already brought; torch, torchvision, numpy, matplotlib, pyyaml, requests and pillow come from the .pth.)
Then, from a visattn checkout::

    PYTHONPATH=$PWD ~/venv-ultra/bin/python benchmarks/detect_vs_ultralytics.py

Nothing is downloaded at run time. The ultralytics processes run with ``YOLO_OFFLINE=1`` (no online check, no
hub), ``YOLO_AUTOINSTALL=false`` (no pip installs of "missing" requirements), their settings in the work folder
with ``sync=False`` (no telemetry) and ``plots=False``. That is not enough: ultralytics 8.4.190's dataset check
(``check_det_dataset`` -> ``check_font("Arial.ttf")``) still sends a HEAD request for its font to github.com
whatever ``plots`` says (put any TrueType file as ``Arial.ttf`` into ``YOLO_CONFIG_DIR`` to stop it), so every
non-loopback socket connection and DNS lookup in the ultralytics processes is refused and counted, with the
ultralytics frame that asked (``network_attempts_blocked`` in results.json); ultralytics carries on without the
font. Every process also gets ``NO_ALBUMENTATIONS_UPDATE=1`` (albumentations asks PyPI for its newest version at
import otherwise).

Quick end-to-end check (a few minutes)::

    PYTHONPATH=$PWD ~/venv-ultra/bin/python benchmarks/detect_vs_ultralytics.py --epochs 2 --num-train 64 \\
        --num-val 32 --num-test 32 --work-dir runs/dvu-small --results-dir runs/dvu-small/results
"""

from __future__ import annotations

import argparse
import csv
import importlib.metadata
import importlib.util
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CONFIG = "detect/shapes_csp_n_eca"
IMG_SIZE = 160
BATCH = 16
INSTALL_HELP = (
    "detect_vs_ultralytics: the 'ultralytics' package is not importable by {python}. It is an optional peer of this "
    "benchmark and never a dependency of visattn. Install it into a separate virtual environment that reuses this "
    "environment's torch (so pip cannot replace it): `python3 -m venv ~/venv-ultra`, then write this environment's "
    "site-packages folder ({site}) into a file ~/venv-ultra/lib/python3.X/site-packages/_visattn_venv.pth, then "
    "`~/venv-ultra/bin/pip install --no-deps ultralytics` and `~/venv-ultra/bin/pip install polars psutil "
    "ultralytics-thop ultralytics-platform nvidia-ml-py`; run this script with ~/venv-ultra/bin/python and "
    "PYTHONPATH set to the visattn checkout (see the docstring of benchmarks/detect_vs_ultralytics.py)."
)


# ----------------------------------------------------------------------------------------------- helpers
def pin(core: int) -> None:
    """This process (and what it starts) on one core with one torch / OpenMP thread."""
    os.sched_setaffinity(0, {core})
    import torch

    torch.set_num_threads(1)


def ultralytics_env(work: Path) -> dict[str, str]:
    """Environment of every process that imports ultralytics: offline, no auto-install, settings in ``work``."""
    return {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false", "YOLO_CONFIG_DIR": str(work / "ultralytics-config")}


BLOCKED: list[str] = []


def block_network() -> None:
    """Refuse (and count) every socket connection and DNS lookup that is not to this machine."""
    local = ("127.", "::1", "localhost", "0.0.0.0")
    real_connect, real_connect_ex, real_getaddrinfo = (socket.socket.connect, socket.socket.connect_ex,
                                                       socket.getaddrinfo)

    def note(what: str) -> None:
        import traceback

        frames = [f for f in traceback.extract_stack()[:-2] if f"{os.sep}ultralytics{os.sep}" in f.filename]
        where = f" from {Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].name}" if frames else ""
        BLOCKED.append(what + where)

    def is_remote(sock: socket.socket, address: Any) -> bool:
        return sock.family in (socket.AF_INET, socket.AF_INET6) and not str(address[0]).startswith(local)

    def connect(sock: socket.socket, address: Any) -> None:
        if is_remote(sock, address):
            note(f"connect {address}")
            raise ConnectionRefusedError(f"detect_vs_ultralytics blocks network access ({address})")
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        if is_remote(sock, address):
            note(f"connect {address}")
            return 111  # ECONNREFUSED
        return real_connect_ex(sock, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not str(host).startswith(local):
            note(f"dns {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"detect_vs_ultralytics blocks DNS lookups ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo


def import_ultralytics(work: Path) -> Any:
    """``ultralytics`` imported offline, with telemetry and integrations off."""
    os.environ.update(ultralytics_env(work))
    block_network()
    import ultralytics
    from ultralytics import settings

    settings.update(sync=False, clearml=False, comet=False, dvc=False, mlflow=False, raytune=False,
                    tensorboard=False, wandb=False)
    return ultralytics


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def machine_load() -> dict[str, Any]:
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()]}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                    platform.processor())
    except OSError:
        return platform.processor()


# ----------------------------------------------------------------------------------------------- data
def prepare_data(work: Path, counts: dict[str, int]) -> dict[str, str]:
    """The shapes set (COCO, visattn's cache) and the same files in YOLO layout under ``work/yolo``."""
    from visattn.data.detect.readers import coco_to_yolo
    from visattn.data.detect.shapes import SHAPES_CLASSES, ShapesParams, ensure_shapes

    params = ShapesParams(num_train=counts["train"], num_val=counts["val"], num_test=counts["test"],
                          image_size=IMG_SIZE)
    coco_root = ensure_shapes(params)
    yolo_root = work / f"yolo-{coco_root.name}"
    if not (yolo_root / "data.yaml").is_file():
        staging = work / f".yolo-staging-{os.getpid()}"
        coco_to_yolo(src=coco_root, dst=staging)
        os.replace(staging, yolo_root)
    data_yaml = yolo_root / "ultralytics.yaml"
    names = "".join(f"  {k}: {name}\n" for k, name in enumerate(SHAPES_CLASSES))
    data_yaml.write_text(f"path: {yolo_root.resolve()}\ntrain: images/train\nval: images/val\ntest: images/test\n"
                         f"names:\n{names}")
    return {"coco_root": str(coco_root), "yolo_root": str(yolo_root), "data_yaml": str(data_yaml)}


def coco_ids(coco_root: Path, split: str) -> dict[str, dict[str, Any]]:
    """file name -> COCO image entry of one split."""
    data = load_json(coco_root / "annotations" / f"instances_{split}.json")
    return {img["file_name"]: img for img in data["images"]}


def coco_score(coco_root: Path, split: str, detections: list[dict[str, Any]]) -> dict[str, float]:
    """pycocotools bbox AP of ``detections`` (COCO results format) on one split: standard COCO parameters."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return {"map": 0.0, "map50": 0.0, "map75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(coco_root / "annotations" / f"instances_{split}.json"))
        result = COCOeval(truth, truth.loadRes(detections), "bbox")
        result.evaluate()
        result.accumulate()
        result.summarize()
    return {"map": float(result.stats[0]), "map50": float(result.stats[1]), "map75": float(result.stats[2])}


# ----------------------------------------------------------------------------------------------- training workers
def worker_visattn(args: argparse.Namespace) -> None:
    """One visattn run of the config on one core; writes wallclock.csv and each epoch's EMA weights beside it."""
    pin(args.core)
    import lightning as L
    import torch

    from visattn.config import make_config, read_yaml, resolve_config
    from visattn.training import fit, prepare

    counts = json.loads(args.counts)
    overrides: dict[str, Any] = {
        "data_dir": args.coco_root, "num_workers": 0, "out": str(Path(args.work) / "visattn"), "name": args.name,
        "seed": args.seed, "overwrite": True,
        "data_args": {"num_train": counts["train"], "num_val": counts["val"], "num_test": counts["test"]},
    }
    if args.epochs:
        overrides["epochs"] = args.epochs
    config = make_config(read_yaml(resolve_config(CONFIG)), overrides, source=CONFIG)

    class WallClock(L.Callback):
        """Training time since the first step at each validation end, and that epoch's EMA weights."""

        def __init__(self, run_dir: Path) -> None:
            self.run_dir, self.start = run_dir, None

        def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            self.start = time.perf_counter()
            (self.run_dir / "epochs").mkdir(exist_ok=True)
            (self.run_dir / "wallclock.csv").write_text("epoch,time_s\n")

        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.sanity_checking or self.start is None:
                return
            elapsed = time.perf_counter() - self.start
            epoch = trainer.current_epoch + 1
            with open(self.run_dir / "wallclock.csv", "a") as handle:
                handle.write(f"{epoch},{elapsed:.3f}\n")
            torch.save({"state_dict": pl_module.eval_model().state_dict()}, self.run_dir / "epochs" / f"{epoch}.pt")

    prepared = prepare(config)
    prepared.trainer.callbacks.append(WallClock(prepared.run_dir))
    metrics = fit(prepared)
    write_json(Path(args.done), {"run_dir": str(prepared.run_dir), "fit_time_s": metrics["train_time_s"],
                                 "train_time_s": read_wallclock(prepared.run_dir / "wallclock.csv")[-1][1],
                                 "precision": metrics.get("precision"), "epochs_run": metrics.get("epochs_run")})


def read_wallclock(path: Path) -> list[tuple[int, float]]:
    """(epoch, training seconds) rows of a visattn run's wallclock.csv, [] while it has none."""
    try:
        lines = path.read_text().splitlines()[1:]
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            epoch, seconds = line.split(",")
            rows.append((int(epoch), float(seconds)))
        except ValueError:  # a line being written
            break
    return rows


def worker_ultralytics(args: argparse.Namespace) -> None:
    """One ultralytics model from its yaml (no weights) on one core. Its ``time=`` budget follows the visattn run
    training beside it: projected from that run's epochs so far (at each epoch end, where ultralytics refits its
    epoch count and LR schedule to the budget), and exactly that run's training time once it has ended."""
    pin(args.core)
    work = Path(args.work)
    import_ultralytics(work)
    from ultralytics import YOLO

    pace, pace_epochs = Path(args.pace), int(args.pace_epochs)
    state = {"checked": 0.0}
    log: list[dict[str, float]] = []

    def follow(trainer: Any, *, epoch_end: bool) -> None:
        now = time.time()
        if not epoch_end and now - state["checked"] < 5:
            return
        state["checked"] = now
        rows = read_wallclock(pace)
        elapsed = now - trainer.train_time_start
        if rows and rows[-1][0] >= pace_epochs:
            budget = rows[-1][1]  # the partner has finished: its training time, exactly
        elif rows:  # projection; never below what this run has already used, so it cannot stop before the partner
            budget = max(rows[-1][1] / rows[-1][0] * pace_epochs, elapsed + 30)
        else:
            return  # no partner epoch yet: keep the start value
        if epoch_end:
            log.append({"epoch": trainer.epoch + 1, "elapsed_s": round(elapsed, 1), "budget_s": round(budget, 1)})
        trainer.args.time = budget / 3600

    model = YOLO(f"{args.model}.yaml")
    model.add_callback("on_train_batch_end", lambda trainer: follow(trainer, epoch_end=False))
    model.add_callback("on_train_epoch_end", lambda trainer: follow(trainer, epoch_end=True))
    model.train(time=8.0,  # hours, until the partner's first epoch gives a projection
                data=args.data_yaml, imgsz=IMG_SIZE, batch=BATCH, device="cpu", workers=0, plots=False, amp=False,
                seed=args.seed, project=str(work / "ultralytics"), name=args.model, exist_ok=True, save_period=1)
    run_dir = work / "ultralytics" / args.model
    write_json(Path(args.done), {"run_dir": str(run_dir), "budget_updates": log, "network_attempts_blocked": BLOCKED})


# ----------------------------------------------------------------------------------------------- evaluation
def visattn_predictions(run_dir: Path, checkpoint: str, coco_root: Path, split: str) -> list[dict[str, Any]]:
    """COCO-format detections of a visattn checkpoint: predict's preprocessing, validation's postprocessing."""
    import numpy as np
    import torch

    from visattn.data.detect.transforms import letterbox, unletterbox
    from visattn.export import load_run
    from visattn.models.detector import postprocess
    from visattn.predict import open_rgb

    model, spec = load_run(run_dir, checkpoint=checkpoint)
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    images = list(coco_ids(coco_root, split).values())
    folder = coco_root / "images" / split
    out: list[dict[str, Any]] = []
    for start in range(0, len(images), 32):
        chunk = images[start:start + 32]
        batch = []
        for entry in chunk:
            boxed, _ = letterbox(np.asarray(open_rgb(folder / entry["file_name"])), np.zeros((0, 4), np.float32),
                                 size=spec.img_size)
            batch.append(((boxed.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1))  # (3, S, S)
        with torch.no_grad():
            found = postprocess(model(torch.from_numpy(np.stack(batch))), conf_threshold=0.001, iou_threshold=0.6,
                                max_det=300, multi_label=True)
        for entry, result in zip(chunk, found, strict=True):
            boxes = unletterbox(result["boxes"].numpy(), width=entry["width"], height=entry["height"],
                                size=spec.img_size)  # (K, 4) original pixels
            for (x0, y0, x1, y1), score, label in zip(boxes.tolist(), result["scores"].tolist(),
                                                      result["labels"].tolist(), strict=True):
                out.append({"image_id": entry["id"], "category_id": int(label) + 1, "score": float(score),
                            "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return out


def ultralytics_predictions(weights: Path, data_yaml: str, split: str, work: Path) -> list[dict[str, Any]]:
    """COCO-format detections of an ultralytics checkpoint, by ultralytics' own validator (its preprocessing,
    NMS and scaling to original pixels; category id = class + 1, image id = the numeric file stem = the COCO id)."""
    from ultralytics.models.yolo.detect import DetectionValidator

    class Collect(DetectionValidator):
        def eval_json(self, stats: dict[str, Any]) -> dict[str, Any]:
            return stats  # scored outside with pycocotools, the same way for both tools

    validator = Collect(args={"model": str(weights), "data": data_yaml, "split": split, "imgsz": IMG_SIZE,
                              "batch": BATCH, "conf": 0.001, "iou": 0.7, "max_det": 300, "save_json": True,
                              "plots": False, "device": "cpu", "workers": 0, "half": False, "verbose": False,
                              "project": str(work / "ultralytics-val"), "name": "val", "exist_ok": True})
    validator(model=str(weights))
    return [{k: d[k] for k in ("image_id", "category_id", "score", "bbox")} for d in validator.jdict]


def worker_evaluate(args: argparse.Namespace) -> None:
    """Common evaluation of every epoch's weights (val) and of the best checkpoint (val, test) of one run."""
    pin(args.core)
    work, coco_root = Path(args.work), Path(args.coco_root)
    run_dir = Path(args.run_dir)
    per_epoch: dict[int, dict[str, float]] = {}
    if args.tool == "visattn":
        for path in sorted((run_dir / "epochs").glob("*.pt"), key=lambda p: int(p.stem)):
            per_epoch[int(path.stem)] = coco_score(coco_root, "val",
                                                   visattn_predictions(run_dir, str(path), coco_root, "val"))
        final = {split: coco_score(coco_root, split, visattn_predictions(run_dir, "best", coco_root, split))
                 for split in ("val", "test")}
    else:
        import_ultralytics(work)
        for path in sorted((run_dir / "weights").glob("epoch*.pt"), key=lambda p: int(p.stem[5:])):
            # ultralytics names the checkpoint by its 0-based epoch; results.csv counts from 1
            per_epoch[int(path.stem[5:]) + 1] = coco_score(
                coco_root, "val", ultralytics_predictions(path, args.data_yaml, "val", work))
        best = run_dir / "weights" / "best.pt"
        final = {split: coco_score(coco_root, split, ultralytics_predictions(best, args.data_yaml, split, work))
                 for split in ("val", "test")}
    write_json(Path(args.done), {"per_epoch_val": per_epoch, "final": final, "network_attempts_blocked": BLOCKED})


def worker_models(args: argparse.Namespace) -> None:
    """Params / MACs of every final model, ONNX exports, and batch-1 onnxruntime latency, alternating."""
    pin(args.core)
    import numpy as np
    import onnxruntime as ort
    import torch

    import visattn
    from visattn.export import DEFAULT_OPSET, export_onnx, export_run, load_run

    work, jobs = Path(args.work), json.loads(args.jobs)
    import_ultralytics(work)
    from ultralytics import YOLO

    sizes: dict[str, Any] = {}
    onnx_files: dict[str, tuple[Path, str]] = {}  # label -> (file, preprocessing kind)
    for job in jobs:
        run_dir = Path(job["run_dir"])
        if job["tool"] == "visattn":
            if onnx_files.get("visattn (export: + NMS)"):
                continue  # one visattn model is enough for size and latency
            model, _spec = load_run(run_dir)
            counted = visattn.count(model, input_size=(1, 3, IMG_SIZE, IMG_SIZE))
            sizes["visattn csp_n+eca"] = {"params": counted.params, "macs": counted.macs, "source": "visattn.count"}
            export_run(run_dir, formats="onnx")  # verified against eager, or it raises
            onnx_files["visattn (export: + NMS)"] = (run_dir / "export" / "model.onnx", "visattn")
            bare = run_dir / "export-bare" / "model.onnx"
            bare.parent.mkdir(exist_ok=True)
            export_onnx(model, torch.zeros(1, 3, IMG_SIZE, IMG_SIZE), bare, dynamic_batch=False, opset=DEFAULT_OPSET,
                        output_names=("decoded",))
            onnx_files["visattn (network + decoding)"] = (bare, "visattn")
        else:
            best = run_dir / "weights" / "best.pt"
            yolo = YOLO(str(best))
            layers, params, _grads, gflops = yolo.info(imgsz=IMG_SIZE, verbose=True)
            net = yolo.model.float().eval()
            counted = visattn.count(net, input_size=(1, 3, IMG_SIZE, IMG_SIZE))
            sizes[job["label"]] = {"params": counted.params, "macs": counted.macs, "source": "visattn.count",
                                   "ultralytics_info_params": int(params),
                                   "ultralytics_info_gflops": float(gflops), "ultralytics_info_layers": int(layers),
                                   "end2end": bool(getattr(net, "end2end", False))}
            path = Path(YOLO(str(best)).export(format="onnx", imgsz=IMG_SIZE, batch=1, dynamic=False, simplify=False,
                                               device="cpu"))
            onnx_files[f"{job['label']} (export)"] = (path, "ultralytics")
    # one real test image, each tool's own preprocessing (identity letterbox at 160 px)
    from visattn.predict import open_rgb

    test_dir = Path(args.coco_root) / "images" / "test"
    image = np.asarray(open_rgb(sorted(test_dir.iterdir())[0]), np.float32)  # (S, S, 3) RGB
    mean, std = np.array([0.485, 0.456, 0.406], np.float32) * 255, np.array([0.229, 0.224, 0.225], np.float32) * 255
    inputs = {"visattn": ((image - mean) / std).transpose(2, 0, 1)[None].copy(),
              "ultralytics": (image / 255.0).transpose(2, 0, 1)[None].astype(np.float32).copy()}
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    sessions = {label: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for label, (path, _) in onnx_files.items()}
    feeds = {label: {sessions[label].get_inputs()[0].name: inputs[kind]} for label, (_, kind) in onnx_files.items()}
    for label, session in sessions.items():  # warm-up
        for _ in range(20):
            session.run(None, feeds[label])
    per_round: dict[str, list[float]] = {label: [] for label in sessions}
    labels = list(sessions)
    for round_index in range(args.latency_rounds):
        for label in labels[round_index % len(labels):] + labels[:round_index % len(labels)]:
            times = []
            for _ in range(args.latency_runs):
                start = time.perf_counter()
                sessions[label].run(None, feeds[label])
                times.append(time.perf_counter() - start)
            per_round[label].append(statistics.median(times) * 1000)
    latency = {label: {"median_ms": statistics.median(values), "min_ms": min(values), "max_ms": max(values),
                       "rounds": len(values), "runs_per_round": args.latency_runs,
                       "file": str(onnx_files[label][0])} for label, values in per_round.items()}
    write_json(Path(args.done), {"sizes": sizes, "latency": latency, "onnxruntime": ort.__version__,
                                 "network_attempts_blocked": BLOCKED})


# ----------------------------------------------------------------------------------------------- orchestration
def launch(kind: str, core: int, done: Path, log: Path, extra: list[str]) -> subprocess.Popen:
    done.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    # NO_ALBUMENTATIONS_UPDATE: albumentations (imported by visattn's data code) otherwise asks PyPI for its newest
    # version at every import
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "NO_ALBUMENTATIONS_UPDATE": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--core", str(core),
               "--done", str(done), *extra]
    return subprocess.Popen(command, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO)


def run_side_by_side(jobs: list[dict[str, Any]], cores: list[int], work: Path) -> dict[str, Any]:
    """Run ``jobs`` one per core, at most len(cores) at a time; each job's wall time and the load around it."""
    record: dict[str, Any] = {"load_before": machine_load(), "jobs": {}}
    pending = list(jobs)
    while pending:
        group, pending = pending[:len(cores)], pending[len(cores):]
        started = []
        for core, job in zip(cores, group, strict=False):
            done, log = work / "done" / f"{job['label']}.json", work / "logs" / f"{job['label']}.log"
            print(f"  start {job['label']} on core {core} (log {log})", flush=True)
            started.append((job, core, done, log, time.perf_counter(), launch(job["kind"], core, done, log,
                                                                               job["args"])))
        ended: dict[int, tuple[int, float]] = {}  # index -> (exit code, seconds since its start)
        try:
            while len(ended) < len(started):
                for index, (*_, start, process) in enumerate(started):
                    if index not in ended and process.poll() is not None:
                        ended[index] = (process.returncode, time.perf_counter() - start)
                time.sleep(1)
        finally:  # interrupted (Ctrl-C, SIGTERM): no orphaned training on the cores
            for *_, process in started:
                if process.poll() is None:
                    process.terminate()
        for index, (job, core, done, log, _start, _process) in enumerate(started):
            code, seconds = ended[index]
            if code != 0 or not done.is_file():
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
                raise SystemExit(f"detect_vs_ultralytics: {job['label']} failed (exit {code}); end of {log}:\n{tail}")
            record["jobs"][job["label"]] = {"core": core, "process_wall_s": round(seconds, 1), **load_json(done)}
    record["load_after"] = machine_load()
    return record


def visattn_curve(run_dir: Path) -> list[dict[str, float]]:
    from visattn.rundir import read_metrics_csv

    maps = {int(row["epoch"]) + 1: (float(row["val/map"]), float(row["val/map50"]))
            for row in read_metrics_csv(run_dir) if row.get("val/map")}
    with open(run_dir / "wallclock.csv", newline="") as handle:
        return [{"epoch": int(row["epoch"]), "time_s": float(row["time_s"]), "log_map": maps[int(row["epoch"])][0],
                 "log_map50": maps[int(row["epoch"])][1]} for row in csv.DictReader(handle)]


def ultralytics_curve(run_dir: Path) -> list[dict[str, float]]:
    with open(run_dir / "results.csv", newline="") as handle:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(handle)]
    return [{"epoch": int(float(r["epoch"])), "time_s": float(r["time"]), "log_map": float(r["metrics/mAP50-95(B)"]),
             "log_map50": float(r["metrics/mAP50(B)"])} for r in rows]


def value_at(curve: list[dict[str, Any]], seconds: float, key: str) -> float | None:
    """The metric of the last epoch finished by ``seconds`` (the model one would have then), None before the first."""
    done = [point[key] for point in curve if point["time_s"] <= seconds + 1e-6]
    return done[-1] if done else None


def time_to_reach(curve: list[dict[str, Any]], target: float, key: str) -> float | None:
    return next((point["time_s"] for point in curve if point[key] >= target), None)


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def build_report(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines = ["| pair: budget | run | epochs | train s | val mAP50-95 at 25 / 50 / 75 / 100 % of the budget | best val "
             "(own log) | best val | test mAP50-95 | test mAP50 | s to reach the partner's best val |",
             "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for pair in results["pairs"]:
        budget = pair["budget_s"]
        members = (pair["visattn"], pair["ultralytics"])
        for label, partner in (members, members[::-1]):
            run, curve = runs[label], runs[label]["curve"]
            at = " / ".join(fmt(value_at(curve, budget * f, "coco_map")) for f in (0.25, 0.5, 0.75, 1.0))
            target = runs[partner]["final"]["val"]["map"]
            reach = time_to_reach(curve, target, "coco_map")
            lines.append(f"| {' vs '.join(members)}: {budget:.0f} s | {label} | {curve[-1]['epoch']} | "
                         f"{curve[-1]['time_s']:.0f} | {at} | {fmt(max(p['log_map'] for p in curve))} | "
                         f"{fmt(run['final']['val']['map'])} | {fmt(run['final']['test']['map'])} | "
                         f"{fmt(run['final']['test']['map50'])} | "
                         f"{'not reached' if reach is None else f'{reach:.0f}'} (of {target:.3f}) |")
    lines += ["", "| model | params (M) | MACs at 160 px (G, visattn.count) | ultralytics' model.info(imgsz=160) |",
              "|---|---:|---:|---|"]
    for label, size in results["sizes"].items():
        own = (f"{size['ultralytics_info_params'] / 1e6:.3f} M params, {size['ultralytics_info_gflops']:.3f} GFLOPs "
               f"(= {size['ultralytics_info_gflops'] / 2:.3f} G MACs)" if "ultralytics_info_gflops" in size else "")
        lines.append(f"| {label} | {size['params'] / 1e6:.3f} | {size['macs'] / 1e9:.3f} | {own} |")
    lines += ["", "| ONNX file, batch 1, onnxruntime, 1 thread | ms (median of round medians) | min-max over rounds |",
              "|---|---:|---|"]
    for label, lat in results["latency"].items():
        lines.append(f"| {label} | {lat['median_ms']:.2f} | {lat['min_ms']:.2f}-{lat['max_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def read_yaml_epochs() -> int:
    from visattn.config import read_yaml, resolve_config

    return int(read_yaml(resolve_config(CONFIG))["epochs"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="visattn epochs (default: the config's 15)")
    parser.add_argument("--models", default="yolo26n,yolo11n", help="ultralytics model yamls (no .yaml)")
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=300)
    parser.add_argument("--num-test", type=int, default=300)
    parser.add_argument("--cores", default="0,1", help="two cores: a pair's two runs, one on each, side by side")
    parser.add_argument("--latency-rounds", type=int, default=10)
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument("--work-dir", default="runs/detect-vs-ultralytics", help="runs, checkpoints, exports")
    parser.add_argument("--results-dir", default="benchmarks/results/detect-vs-ultralytics",
                        help="results.json, curves.csv, table.md")
    parser.add_argument("--reuse", action="store_true", help="keep finished training runs of --work-dir")
    # internal: one job of the orchestration, in its own process
    parser.add_argument("--worker", choices=["visattn", "ultralytics", "evaluate", "models"], help=argparse.SUPPRESS)
    for name in ("core", "seed"):
        parser.add_argument(f"--{name}", type=int, default=0, help=argparse.SUPPRESS)
    for name in ("done", "work", "coco-root", "data-yaml", "counts", "name", "model", "pace", "pace-epochs", "tool",
                 "run-dir", "jobs"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        {"visattn": worker_visattn, "ultralytics": worker_ultralytics, "evaluate": worker_evaluate,
         "models": worker_models}[args.worker](args)
        return
    if importlib.util.find_spec("ultralytics") is None:
        import sysconfig

        print(INSTALL_HELP.format(python=sys.executable, site=sysconfig.get_paths()["purelib"]), file=sys.stderr)
        raise SystemExit(2)
    orchestrate(args)


def orchestrate(args: argparse.Namespace) -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the runs it started are stopped too
    work, results_dir = (REPO / args.work_dir).resolve(), (REPO / args.results_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cores = [int(c) for c in args.cores.split(",")]
    if len(cores) != 2:
        raise SystemExit(f"detect_vs_ultralytics: --cores needs two cores (one per tool of a pair), got {args.cores!r}")
    counts = {"train": args.num_train, "val": args.num_val, "test": args.num_test}
    models = [m for m in args.models.split(",") if m]
    epochs = args.epochs or read_yaml_epochs()
    print(f"data: shapes {counts} at {IMG_SIZE} px", flush=True)
    data = prepare_data(work, counts)
    common = ["--work", str(work), "--coco-root", data["coco_root"], "--data-yaml", data["data_yaml"]]
    phases: dict[str, Any] = {}
    done: dict[str, Any] = {}
    for index, model in enumerate(models):
        label = f"visattn-s{index}"
        wallclock = work / "visattn" / label / "wallclock.csv"
        jobs = [{"label": label, "kind": "visattn",
                 "args": [*common, "--counts", json.dumps(counts), "--name", label, "--seed", str(index),
                          "--epochs", str(epochs)]},
                {"label": model, "kind": "ultralytics",
                 "args": [*common, "--model", model, "--seed", "0", "--pace", str(wallclock),
                          "--pace-epochs", str(epochs)]}]
        if args.reuse and all((work / "done" / f"{job['label']}.json").is_file() for job in jobs):
            phases[f"{label}+{model}"] = {"reused": True}
        else:
            wallclock.unlink(missing_ok=True)  # the ultralytics run must not pace itself on an old file
            order = cores if index % 2 == 0 else cores[::-1]  # the tools swap cores from pair to pair
            print(f"pair {index + 1}: visattn {CONFIG} seed {index} ({epochs} epochs) on core {order[0]} | "
                  f"{model}.yaml on core {order[1]}, time budget = the visattn run's training time", flush=True)
            phases[f"{label}+{model}"] = run_side_by_side(jobs, order, work)
        done.update({job["label"]: load_json(work / "done" / f"{job['label']}.json") for job in jobs})

    print("evaluation: every epoch's weights on val, best checkpoints on val and test (pycocotools)", flush=True)
    eval_jobs = [{"label": f"eval-{label}", "kind": "evaluate",
                  "args": [*common, "--tool", "visattn" if label.startswith("visattn") else "ultralytics",
                           "--run-dir", d["run_dir"]]} for label, d in done.items()]
    evaluated = run_side_by_side(eval_jobs, cores, work)["jobs"]
    print("models: params, MACs, ONNX exports, latency (alternating, one core)", flush=True)
    model_jobs = [{"tool": "visattn" if label.startswith("visattn") else "ultralytics", "label": label,
                   "run_dir": d["run_dir"]} for label, d in done.items()]
    measured = run_side_by_side([{"label": "models", "kind": "models",
                                  "args": [*common, "--jobs", json.dumps(model_jobs), "--latency-rounds",
                                           str(args.latency_rounds), "--latency-runs", str(args.latency_runs)]}],
                                cores[:1], work)["jobs"]["models"]

    pairs = [{"visattn": f"visattn-s{index}", "ultralytics": model,
              "budget_s": done[f"visattn-s{index}"]["train_time_s"]} for index, model in enumerate(models)]
    runs: dict[str, Any] = {}
    for label, d in done.items():
        run_dir = Path(d["run_dir"])
        curve = visattn_curve(run_dir) if label.startswith("visattn") else ultralytics_curve(run_dir)
        scores = evaluated[f"eval-{label}"]
        for point in curve:
            score = scores["per_epoch_val"].get(str(point["epoch"]))
            point["coco_map"] = None if score is None else score["map"]
            point["coco_map50"] = None if score is None else score["map50"]
        runs[label] = {"run_dir": str(run_dir), "curve": curve, "final": scores["final"]}
    blocked = sorted({*measured["network_attempts_blocked"],
                      *(a for e in evaluated.values() for a in e.get("network_attempts_blocked", [])),
                      *(a for d in done.values() for a in d.get("network_attempts_blocked", []))})
    import torch

    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "cpu": cpu_model(),
               "torch": torch.__version__, "ultralytics": importlib.metadata.version("ultralytics"),
               "data": {**counts, "img_size": IMG_SIZE}, "visattn_config": CONFIG,
               "visattn_epochs": epochs, "phases": phases, "pairs": pairs,
               "runs": runs, "sizes": measured["sizes"], "latency": measured["latency"],
               "onnxruntime": measured["onnxruntime"], "network_attempts_blocked": blocked}
    table = build_report(results)
    results_dir.mkdir(parents=True, exist_ok=True)
    write_json(results_dir / "results.json", results)
    with open(results_dir / "curves.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run", "epoch", "time_s", "val_map_own_log", "val_map50_own_log", "val_map_pycocotools",
                         "val_map50_pycocotools"])
        for label, run in runs.items():
            for p in run["curve"]:
                writer.writerow([label, p["epoch"], round(p["time_s"], 1), round(p["log_map"], 4),
                                 round(p["log_map50"], 4), fmt(p["coco_map"], 4), fmt(p["coco_map50"], 4)])
    (results_dir / "table.md").write_text(table)
    print(table)
    print(f"network attempts blocked: {len(blocked)} {blocked[:5]}")
    print(f"written: {results_dir}/results.json, curves.csv, table.md")


if __name__ == "__main__":
    main()
