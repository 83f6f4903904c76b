"""Latency of a sweep's configurations: each finished run's model rebuilt (``ModelSpec``) and timed at batch 1 on
the CPU, in turns, optionally also exported to ONNX and timed under onnxruntime; cached in ``latency.json``."""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from visattn.complexity import measure_latency
from visattn.export import DEFAULT_OPSET, export_onnx
from visattn.extras import MissingExtraError, require
from visattn.models.spec import ModelSpec
from visattn.perf import cpu_model
from visattn.rundir import read_run_files, write_atomic
from visattn.sweep.execute import run_dir_of
from visattn.sweep.report import RunResult


def rebuild_model(run_dir: Path) -> tuple[Any, tuple[int, int, int, int]]:
    """The architecture of a finished run (weights do not matter for timing) and its batch-1 input size."""
    config, metrics = read_run_files(run_dir)
    spec = ModelSpec.from_config(config, num_classes=int(metrics["num_classes"]),
                                 in_chans=int(metrics.get("in_chans", 3)))  # older runs did not record in_chans
    return spec.build(), (1, spec.in_chans, spec.img_size, spec.img_size)


def ort_available() -> str | None:
    """None when onnxruntime, onnx and onnxscript (the ``[export]`` extra) import, else why not."""
    try:
        for module in ("onnx", "onnxruntime", "onnxscript"):
            require(module, purpose="onnxruntime latency")
    except MissingExtraError as err:
        return str(err)
    return None


def ort_session(model: Any, size: tuple[int, int, int, int], folder: Path, *,
                threads: int) -> tuple[Any, dict[str, Any]]:
    """An onnxruntime session of ``model`` exported by visattn's exporter (static batch 1) into ``folder``."""
    import onnxruntime as ort

    model.eval()
    example = torch.randn(*size)
    with torch.no_grad():
        out = model(example)
    outputs = len(out) if isinstance(out, (tuple, list)) else 1  # detectors give several tensors
    names = ("logits",) if outputs == 1 else tuple(f"output{i}" for i in range(outputs))
    export_onnx(model, example, folder / "model.onnx", dynamic_batch=False, opset=DEFAULT_OPSET, output_names=names)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return session, {"x": example.numpy()}


def time_ort(session: Any, feed: dict[str, Any], *, warmup: int, repeats: int) -> float:
    """Median ms of ``repeats`` ``session.run`` calls after ``warmup`` untimed ones."""
    times = []
    for step in range(warmup + repeats):
        start = time.perf_counter()
        session.run(None, feed)
        if step >= warmup:
            times.append(1000.0 * (time.perf_counter() - start))
    return statistics.median(times)


def measure_latencies(sweep_dir: Path, results: list[RunResult], *, threads: int = 1, rounds: int = 5,
                      repeats: int = 6, ort: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Median batch-1 CPU latency (ms) of each configuration with a finished run; cached in ``latency.json``.

    ``threads``: torch threads while timing. One by default: a multi-threaded batch-1 pass of a small model
    is mostly thread synchronisation, and on a shared machine it degrades by 10-100x for models with many
    small ops (measured: CBAM 6.7 ms alone, 530 ms under load). The models are timed in turns (``rounds`` x
    ``repeats`` passes each, median of the round medians) so a slow spell is spread over all of them.

    ``ort``: also time each model exported to ONNX under onnxruntime (same threads, in the same turns), into
    ``info["ort"]`` (``ms``, ``notes`` per configuration, or ``unavailable``). A missing extra or a failed
    export leaves a note, never an error: the column is a convenience, the sweep's results are not.
    """
    path = sweep_dir / "latency.json"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    cached = cache.get("_info") or {}
    if cached.get("threads") != threads or (ort and "ort" not in cached):
        cache = {}  # timed with another thread count, or without onnxruntime: not comparable
    info = cache.get("_info") or {"threads": threads, "repeats": rounds * repeats, "cpu": cpu_model()}
    if ort and "ort" not in info:
        missing = ort_available()
        if missing is None:
            import onnxruntime

            info["ort"] = {"version": onnxruntime.__version__, "threads": threads, "opset": DEFAULT_OPSET,
                           "ms": {}, "notes": {}}
        else:
            info["ort"] = {"version": None, "threads": threads, "unavailable": missing, "ms": {}, "notes": {}}
    if not ort:
        info.pop("ort", None)
    out: dict[str, float] = {k: v for k, v in cache.items() if k != "_info"}
    todo: dict[str, tuple[Any, tuple[int, int, int, int]]] = {}
    for r in results:
        if r.status == "ok" and r.plan.config not in out and r.plan.config not in todo:
            try:
                todo[r.plan.config] = rebuild_model(run_dir_of(sweep_dir, r.plan.run_id))
            except (ImportError, KeyError, ValueError, TypeError, FileNotFoundError) as err:
                print(f"visattn: no latency for {r.plan.config}: cannot rebuild {r.plan.run_id}: {err}",
                      file=sys.stderr)
    medians: dict[str, list[float]] = {config: [] for config in todo}
    ort_medians: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="visattn-ort-") as scratch:
        sessions: dict[str, tuple[Any, dict[str, Any]]] = {}
        if ort and not info["ort"].get("unavailable"):
            for config, (model, size) in todo.items():
                folder = Path(scratch) / f"m{len(sessions) + len(info['ort']['notes'])}"
                folder.mkdir()
                try:
                    sessions[config] = ort_session(model, size, folder, threads=threads)
                    ort_medians[config] = []
                except Exception as err:  # any exporter or runtime failure: a footnote, not a failed sweep
                    info["ort"]["notes"][config] = f"export failed: {type(err).__name__}: {str(err)[:300]}"
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for _ in range(rounds if todo else 0):
                for config, (model, size) in todo.items():
                    timing = measure_latency(model, input_size=size, warmup=2, repeats=repeats, device="cpu")
                    medians[config].append(timing["median_ms"])
                    if config in sessions:
                        ort_medians[config].append(time_ort(*sessions[config], warmup=2, repeats=repeats))
        finally:
            torch.set_num_threads(before)
        del sessions
    out.update({config: statistics.median(values) for config, values in medians.items()})
    if ort:
        info["ort"]["ms"].update({config: statistics.median(v) for config, v in ort_medians.items() if v})
    write_atomic(path, json.dumps({"_info": info, **out}, indent=2))
    return out, info
