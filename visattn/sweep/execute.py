"""Executors: each run is a process of its own (``visattn.sweep.worker``), launched locally or in a Ray task.

Layout of a sweep directory: ``runs/<run_id>/`` (ordinary run directories), ``logs/<run_id>.log`` (each run's
stdout and stderr, appended per attempt), ``status/<run_id>.json`` (outcome of the last attempt).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from visattn.data.datamodule import available_cpus
from visattn.errors import ConfigError
from visattn.extras import require
from visattn.perf import peaks_for_runs, precision_dtype, resolve_precision
from visattn.rundir import CHECKPOINTS, read_file, run_error, write_atomic
from visattn.sweep.worker import ERROR_MARK, child_main, context

EXECUTORS = ("local", "ray")
PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding visattn/, for remote Python paths


@dataclass
class Outcome:
    run_id: str
    status: str  # "ok" or "failed"
    error: str
    seconds: float
    returncode: int | None
    host: str


def default_workers() -> int:
    """Runs at a time when ``--workers`` is not given: one per core (at most 8), each with one torch thread.

    Measured on a 2-core machine (benchmarks/README.md, "Sweeps: runs per hour"): two single-thread runs finish
    more runs per hour than one run with two threads, since one small model's step scales poorly over threads and
    two threads of one process lose time at every synchronisation when the machine is busy. At most 8 so that
    the data sets the runs hold in memory stay bounded.
    """
    return max(1, min(8, available_cpus()))


def run_dir_of(sweep_dir: Path, run_id: str) -> Path:
    return sweep_dir / "runs" / run_id


def is_done(sweep_dir: Path, run_id: str) -> bool:
    """Finished with a usable result (a failed or diverged run is retried, not kept as done; ``run_error``)."""
    return run_error(run_dir_of(sweep_dir, run_id)) is None


def read_status(sweep_dir: Path, run_id: str) -> dict[str, Any] | None:
    try:
        return json.loads(read_file(sweep_dir / "status" / f"{run_id}.json"))
    except FileNotFoundError:
        return None


def write_status(sweep_dir: Path, outcome: Outcome) -> None:
    folder = sweep_dir / "status"
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / f"{outcome.run_id}.json", json.dumps({**asdict(outcome), "finished_at": time.time()},
                                                                indent=2))


def launch_values(values: dict[str, Any], sweep_dir: Path, run_id: str) -> dict[str, Any]:
    """The run's TrainConfig values: continue from ``last.ckpt`` if there is one, else start afresh."""
    run_dir = run_dir_of(sweep_dir, run_id)
    resume = (run_dir / CHECKPOINTS / "last.ckpt").is_file()
    stale = not resume and run_dir.is_dir() and any(run_dir.iterdir())
    return {**values, "out": str(run_dir.parent), "name": run_id, "resume": resume, "overwrite": stale}


def _error_from_log(log: Path, returncode: int) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    marked = [line[len(ERROR_MARK):] for line in lines if line.startswith(ERROR_MARK)]
    if marked:
        return marked[-1]
    how = f"killed by signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
    tail = next((line.strip() for line in reversed(lines) if line.strip()), "")
    return f"worker process {how}" + (f"; last output: {tail[:300]}" if tail else "")


def run_peaks(values: Sequence[dict[str, Any]], *, threads: int) -> list[dict[str, Any]]:
    """The CPU matmul peaks the runs will be divided by (visattn.perf), one per dtype their precisions compute in,
    taken from the cache or measured now, at the runs' thread count: called before any run starts, so no peak
    is measured while another run trains. Runs on a GPU measure their own (a GPU's peak is not disturbed by a
    neighbour's CPU work); a run whose hardware key differs (another Ray node) ignores these and measures."""
    import torch

    dtypes = set()
    for run in values:
        accelerator = str(run.get("accelerator", "auto"))
        if accelerator not in ("cpu", "auto") or (accelerator == "auto" and torch.cuda.is_available()):
            continue
        precision, _ = resolve_precision(str(run.get("precision", "auto")), accelerator="cpu")
        dtype = precision_dtype(precision)
        dtypes.add("fp32" if dtype == "fp16" else dtype)  # fp16 autocast on CPU is divided by the fp32 peak
    return peaks_for_runs(sorted(dtypes), threads=threads) if dtypes else []


def run_one(*, run_id: str, values: dict[str, Any], sweep_dir: str, threads: int,
            peaks: list[dict[str, Any]] | None = None) -> Outcome:
    """Train one grid point in a process of its own; returns its outcome (never raises for a failed run).
    ``peaks``: matmul peaks measured before the sweep started (:func:`run_peaks`), handed to the run."""
    sweep = Path(sweep_dir)
    log = sweep / "logs" / f"{run_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    config = launch_values(values, sweep, run_id)
    with open(log, "a") as handle:
        handle.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {run_id} on {os.uname().nodename}, "
                     f"resume={config['resume']}, threads={threads}\n")
    start = time.perf_counter()
    process = context().Process(target=child_main, args=(config, str(log), threads, os.getpid(), peaks or []),
                                name=f"sweep-{run_id}")
    process.start()
    process.join()
    seconds = time.perf_counter() - start
    code = process.exitcode if process.exitcode is not None else -1
    problem = run_error(run_dir_of(sweep, run_id))
    ok = code == 0 and problem is None
    error = "" if ok else _error_from_log(log, code) if code != 0 else str(problem)
    return Outcome(run_id, "ok" if ok else "failed", error, seconds, code, os.uname().nodename)


Task = tuple[str, dict[str, Any]]  # (run_id, TrainConfig values)


def run_local(tasks: Sequence[Task], *, sweep_dir: Path, workers: int, threads: int | None,
              on_done: Callable[[Outcome], None], peaks: list[dict[str, Any]] | None = None) -> None:
    """``workers`` runs at a time on this machine, each with ``threads`` torch threads (default cores // workers)."""
    threads = threads or max(1, available_cpus() // workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_one, run_id=run_id, values=values, sweep_dir=str(sweep_dir), threads=threads,
                               peaks=peaks)
                   for run_id, values in tasks]
        try:
            for future in as_completed(futures):
                on_done(future.result())
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def start_ray(address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started it (and so must shut it down)."""
    ray = require("ray", purpose="visattn sweep --executor ray")
    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
        p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)}}
    if address is None:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    else:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    return True


def ray_slots(cpus_per_run: float, gpus_per_run: float) -> int:
    """How many runs the connected cluster can hold at once; refuses requests no node could ever meet."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    if cpus_per_run > cpus or gpus_per_run > gpus:
        raise ConfigError(f"each run asks for {cpus_per_run} CPU(s) and {gpus_per_run} GPU(s) but the Ray cluster "
                         f"has {cpus:g} CPU(s) and {gpus:g} GPU(s) in all; lower --cpus-per-run/--gpus-per-run")
    slots = [cpus / cpus_per_run] if cpus_per_run > 0 else []
    if gpus_per_run > 0:
        slots.append(gpus / gpus_per_run)
    return max(1, int(min(slots))) if slots else 1


def run_ray(tasks: Sequence[Task], *, sweep_dir: Path, cpus_per_run: float, gpus_per_run: float,
            threads: int | None, on_done: Callable[[Outcome], None],
            peaks: list[dict[str, Any]] | None = None) -> None:
    """Each run is a Ray task holding ``cpus_per_run``/``gpus_per_run``; Ray places them on the cluster's nodes.

    ``threads``: torch threads of each run (default: ``cpus_per_run``). Runs write to ``sweep_dir`` on whichever
    node they land: across machines it must be a shared filesystem
    at the same path, with visattn importable there (same venv path, or installed on every node).
    """
    import ray

    threads = threads or max(1, int(cpus_per_run))
    remote = ray.remote(run_one).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)
    pending = {remote.remote(run_id=run_id, values=values, sweep_dir=str(sweep_dir), threads=threads,
                             peaks=peaks): run_id
               for run_id, values in tasks}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                run_id = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as err:  # the task itself died (node lost, worker killed): record, go on
                    outcome = Outcome(run_id, "failed", f"ray: {type(err).__name__}: {str(err)[:300]}", 0.0, None, "")
                on_done(outcome)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
