"""Run a sweep (resumable, one directory) and write its tables and plots."""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visattn.config import ConfigError, check_name, held_notices, logger_names, require_loggers
from visattn.data.datamodule import available_cpus
from visattn.errors import UnknownNameError
from visattn.extras import require
from visattn.rundir import (
    LOCK,
    SWEEP_MARKER,
    DirLock,
    check_out_dir,
    clear_dir,
    create_marker,
    ensure_marker,
    is_regular,
    marker_id,
    marker_proof,
    read_metrics,
    remove_created,
    renew_marker,
)
from visattn.sweep.execute import (
    EXECUTORS,
    Outcome,
    is_done,
    ray_slots,
    read_status,
    run_dir_of,
    run_error,
    run_local,
    run_peaks,
    run_ray,
    start_ray,
    write_status,
)
from visattn.sweep.grid import (
    RunPlan,
    SweepSpec,
    check_grid,
    check_sweep_file,
    expand,
    read_sweep_file,
)
from visattn.sweep.latency import measure_latencies, ort_available
from visattn.sweep.plots import write_plots
from visattn.sweep.report import (
    ConfigSummary,
    RunResult,
    collect,
    metric_value,
    print_table,
    summarize,
    write_results_csv,
    write_summary_md,
)


@dataclass
class SweepResult:
    sweep_dir: Path
    results: list[RunResult]
    summary: list[ConfigSummary]
    summary_md: str


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """``[done/total]`` lines with the time left, from the mean duration of the runs finished so far."""

    def __init__(self, *, total: int, done: int, to_run: int, slots: int, metric: str, sweep_dir: Path) -> None:
        self.total, self.done, self.left, self.slots = total, done, to_run, slots
        self.metric, self.sweep_dir = metric, sweep_dir
        self.start = time.monotonic()
        self.seconds: list[float] = []

    def line(self, outcome: Outcome) -> str:
        self.done += 1
        self.left -= 1
        if outcome.status == "ok":
            self.seconds.append(outcome.seconds)
            try:
                metrics = read_metrics(run_dir_of(self.sweep_dir, outcome.run_id))
                what = f"{self.metric}={metric_value(metrics, self.metric):.4f}"
            except (OSError, KeyError, TypeError, ValueError):  # not in metrics.json, or not a number
                what = f"{self.metric}=?"
        else:
            what = f"error: {outcome.error[:120]}"
        per_run = statistics.fmean(self.seconds) if self.seconds else None
        left = "?" if per_run is None else _duration(per_run * math.ceil(self.left / self.slots))
        return (f"[{self.done}/{self.total}] {outcome.status:<6} {outcome.run_id}  {what}  ({outcome.seconds:.0f}s)"
                f" | elapsed {_duration(time.monotonic() - self.start)}, ~{left} left")


MARKER = SWEEP_MARKER  # created first in every sweep directory, with an id that sweep.json repeats (sweep_id)


def _is_empty(folder: Path) -> bool:
    """Nothing in it but what a start killed before sweep.json leaves (regular files): a lock, the marker, the
    temporary file of sweep.json."""
    return all(item.name in (LOCK, MARKER, ".sweep.json.tmp") and is_regular(item) for item in folder.iterdir())


def sweep_proof(sweep_dir: Path) -> str | None:
    """Why ``sweep_dir`` is not a sweep directory visattn made, or None when it is (``visattn.rundir.marker_proof``;
    a sweep made before the id existed proves itself by a sweep.json whose spec expands to exactly the runs it
    lists: a lookalike sweep.json proves nothing)."""

    def expands_to_its_runs(record: dict[str, Any]) -> str | None:
        try:
            spec, plans = read_sweep_file(sweep_dir)
            with held_notices():  # a check, not a start: no notes of the defaults the spec picks
                same = [p.run_id for p in plans] == [p.run_id for p in expand(spec)]
        except (ConfigError, KeyError, TypeError, ValueError, AttributeError, OSError):
            same = False
        return None if same else "its sweep.json is not a visattn sweep's (its spec does not expand to its runs)"

    return marker_proof(sweep_dir, marker=MARKER, record_file="sweep.json", id_key="sweep_id",
                        legacy=expands_to_its_runs)


@dataclass
class Claim:
    """A sweep directory held by this call. ``started``: runs were launched, so nothing is removed on failure."""

    sweep_dir: Path
    created: list[Path]  # folders this call made: ``--out`` and its missing parents, then the sweep directory
    adopted_empty: bool  # the directory existed but was empty: everything in it now is this call's
    started: bool = False
    sweep_id: str = ""  # the marker's id, recorded in sweep.json


def _open_dir(sweep_dir: Path, *, overwrite: bool) -> tuple[bool, bool]:
    """(created, adopted_empty): make the sweep directory with its marker, or check that an existing one provably
    is a sweep directory (:func:`sweep_proof`) or is empty; anything else is refused and left untouched. An older
    sweep without any marker file may be continued (it is marked then), not overwritten in the same command."""
    if sweep_dir.is_symlink():
        raise ConfigError(f"{sweep_dir} is a symbolic link; visattn does not follow it (give the folder it points to "
                          "with --out/--name)")
    if not sweep_dir.exists():
        try:
            sweep_dir.mkdir()
        except FileExistsError as err:
            raise ConfigError(f"{sweep_dir} was created by another process while this sweep started; run the "
                              "command again") from err
        create_marker(sweep_dir, MARKER, made_by="visattn sweep")
        return True, False
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} exists and is not a folder; choose another --name or --out")
    marked = marker_id(sweep_dir, MARKER) is not None  # a marker that is a link is refused here, with its path
    if _is_empty(sweep_dir):  # nothing to lose: make it a sweep directory
        return False, True
    why_not = sweep_proof(sweep_dir)
    if overwrite and (why_not is not None or not marked):
        why_not = why_not or f"it has no {MARKER} file (a sweep of an older visattn: run it once without --overwrite)"
        raise ConfigError(f"--overwrite empties only sweep directories made by visattn (they hold a {MARKER} file "
                          f"with an id that sweep.json repeats); {sweep_dir} is not one ({why_not}), so nothing in it "
                          "was touched. Choose another --name or --out")
    if why_not is not None:
        raise ConfigError(f"{sweep_dir} exists and is not a visattn sweep directory ({why_not}); nothing in it was "
                          "touched. Choose another --name or --out")
    return False, False


def _clear_runs_first(sweep_dir: Path) -> None:
    """Empty the run directories of a sweep being overwritten, each under its own training lock: a run still
    alive (e.g. a worker that outlived a killed sweep) is refused with its pid and host, and nothing is removed."""
    runs = sweep_dir / "runs"
    if runs.is_symlink() or not runs.is_dir():  # a link is unlinked by clear_dir, never followed
        return
    folders = sorted(p for p in runs.iterdir() if p.is_dir() and not p.is_symlink())
    locks: list[DirLock] = []
    try:
        for folder in folders:
            locks.append(DirLock(folder, what="run").acquire())
        for folder in folders:
            clear_dir(folder, keep=(LOCK,))
    finally:
        for lock in locks:
            lock.release()


@contextmanager
def claim_sweep_dir(sweep_dir: Path, *, overwrite: bool) -> Iterator[Claim]:
    """Create (or reopen) a sweep directory, lock it for the life of the sweep, and on ``overwrite`` empty it.

    What keeps a user's files safe: the sweep directory is always ``<out>/<one name>``; only a directory holding
    the marker is ever emptied, and only by the process holding its lock; a call that fails before its first run
    removes exactly what it made (and, in a folder it found empty, what it put there).
    """
    created = check_out_dir(sweep_dir.parent)
    try:
        made, adopted_empty = _open_dir(sweep_dir, overwrite=overwrite)
        lock = DirLock(sweep_dir, what="sweep").acquire()
    except BaseException:
        remove_created(created)
        raise
    claim = Claim(sweep_dir, [*created, sweep_dir] if made else created, adopted_empty)
    undo = False
    try:
        if adopted_empty:
            renew_marker(sweep_dir, MARKER, made_by="visattn sweep")
        if overwrite:
            _clear_runs_first(sweep_dir)
            clear_dir(sweep_dir, keep=(LOCK, MARKER))
        claim.sweep_id = ensure_marker(sweep_dir, MARKER, made_by="visattn sweep")
        yield claim
    except BaseException:
        undo = not claim.started and (made or adopted_empty)
        if undo:  # still under the lock: nobody else is inside
            clear_dir(sweep_dir, keep=(LOCK,))
        raise
    finally:
        lock.release()
        if undo:
            (sweep_dir / LOCK).unlink(missing_ok=True)
            remove_created(claim.created)  # the sweep directory (now empty), then the --out folders it made


def to_run(sweep_dir: Path, plans: list[RunPlan], *, retry_failed: bool) -> list[RunPlan]:
    """Runs without a usable metrics.json (failed ones too, unless ``retry_failed`` is False)."""
    out = []
    for plan in plans:
        if is_done(sweep_dir, plan.run_id):
            continue
        status = read_status(sweep_dir, plan.run_id)
        if not retry_failed and status and status["status"] == "failed":
            continue
        out.append(plan)
    return out


def run_sweep(spec: SweepSpec, *, out: str | Path = "runs/sweeps", name: str | None = None, executor: str = "local",
              workers: int = 1, ray_address: str | None = None, cpus_per_run: float = 1.0,
              gpus_per_run: float = 0.0, threads_per_run: int | None = None, retry_failed: bool = True,
              overwrite: bool = False, latency_threads: int = 1, ort_latency: bool | None = None,
              echo: bool = True) -> SweepResult:
    """Train every grid point not finished yet in ``<out>/<name>`` and write the results, summary and plots.

    Started again with the same spec, it skips finished runs and resumes unfinished ones from their last
    checkpoint. A spec that only adds runs (more seeds, more configurations) grows the sweep; one that drops or
    changes an earlier run is refused unless ``overwrite``, which empties the directory, and only if it is a sweep
    directory (holds the marker file): see :func:`claim_sweep_dir`.

    ``ort_latency``: add an onnxruntime latency column next to the eager one (None: when the ``[export]`` extra
    is installed; True without it gives n/a cells saying why).
    """
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if threads_per_run is not None and (not isinstance(threads_per_run, int) or threads_per_run < 1):
        raise ConfigError(f"threads_per_run must be an integer >= 1, got {threads_per_run!r}")
    if cpus_per_run < 0 or gpus_per_run < 0 or cpus_per_run + gpus_per_run == 0:
        raise ConfigError(f"--cpus-per-run/--gpus-per-run must be >= 0 and not both 0, got {cpus_per_run}, "
                         f"{gpus_per_run}")
    plans = expand(spec)
    sweep_dir = Path(out) / check_name(spec.default_name() if name is None else name, what="sweep")
    check_grid(plans)
    if executor == "ray":
        require("ray", purpose="visattn sweep --executor ray")
    # checked before any run trains: the report's statistics and plots need them at the end
    require("scipy", purpose="the sweep's statistics")
    require("matplotlib", purpose="the sweep's plots")
    require_loggers([name for plan in plans for name in logger_names(plan.values.get("logger", "csv"))])
    say = print if echo else (lambda *a, **k: None)
    with claim_sweep_dir(sweep_dir, overwrite=overwrite) as claim:
        added = check_sweep_file(sweep_dir, spec, plans, sweep_id=claim.sweep_id)
        if added:
            say(f"sweep {sweep_dir}: the grid grows by {len(added)} run(s) ({', '.join(added[:4])}"
                f"{' ...' if len(added) > 4 else ''}); the earlier runs are kept", flush=True)
        pending = to_run(sweep_dir, plans, retry_failed=retry_failed)
        done = sum(is_done(sweep_dir, p.run_id) for p in plans)
        started_ray = False
        try:
            if executor == "ray" and pending:
                started_ray = start_ray(ray_address)
                slots = ray_slots(cpus_per_run, gpus_per_run)
                how = (f"Ray, {cpus_per_run:g} CPU(s) + {gpus_per_run:g} GPU(s) per run, up to {slots} at a time, "
                       f"{threads_per_run or max(1, int(cpus_per_run))} torch thread(s) each")
            else:
                slots = min(workers, max(1, len(pending)))
                threads = threads_per_run or max(1, available_cpus() // workers)
                how = f"local, {slots} at a time, {threads} torch thread(s) each"
            say(f"sweep {sweep_dir}: {len(plans)} runs, {done} finished, {len(pending)} to run ({how})", flush=True)
            progress = Progress(total=len(plans), done=len(plans) - len(pending), to_run=len(pending), slots=slots,
                                metric=spec.metric_name, sweep_dir=sweep_dir)

            def on_done(outcome: Outcome) -> None:
                write_status(sweep_dir, outcome)
                say(progress.line(outcome), flush=True)

            tasks = [(p.run_id, p.values) for p in pending]
            claim.started = True
            run_threads = (threads_per_run or max(1, int(cpus_per_run)) if executor == "ray"
                           else threads_per_run or max(1, available_cpus() // workers))
            peaks = run_peaks([p.values for p in pending], threads=run_threads) if pending else []
            for peak in peaks:
                say(f"sweep {sweep_dir}: every run is divided by the {peak['dtype']} matmul peak "
                    f"{peak['flops'] / 1e9:.0f} GFLOP/s at {peak['threads']} thread(s) "
                    f"({'measured now' if peak['source'] == 'measured' else 'cached, ' + str(peak['measured_at'])}; "
                    "profile --remeasure-peak on a quiet machine replaces it)", flush=True)
            if executor == "ray" and pending:
                run_ray(tasks, sweep_dir=sweep_dir, cpus_per_run=cpus_per_run, gpus_per_run=gpus_per_run,
                        threads=threads_per_run, on_done=on_done, peaks=peaks)
            elif pending:
                run_local(tasks, sweep_dir=sweep_dir, workers=workers, threads=threads_per_run, on_done=on_done,
                          peaks=peaks)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
        return _report(sweep_dir, spec, plans, latency_threads=latency_threads, ort_latency=ort_latency, echo=echo)


def _checked(sweep_dir: Path, result: RunResult) -> RunResult:
    """A run whose metrics.json records a failure (non-finite loss or test metric, an error) counts as failed."""
    if result.status != "ok":
        return result
    problem = run_error(run_dir_of(sweep_dir, result.plan.run_id))
    return result if problem is None else dataclasses.replace(result, status="failed", metric=None, error=problem)


def report_sweep(sweep_dir: str | Path, *, metric: str | None = None, latency_threads: int = 1,
                 ort_latency: bool | None = None, echo: bool = True) -> SweepResult:
    """Rewrite the tables and plots of an existing sweep directory (e.g. with another metric) without training."""
    sweep_dir = Path(sweep_dir)
    spec, plans = read_sweep_file(sweep_dir)
    if metric:
        spec.metric = metric
    return _report(sweep_dir, spec, plans, latency_threads=latency_threads, ort_latency=ort_latency, echo=echo)


def _report(sweep_dir: Path, spec: SweepSpec, plans: list[RunPlan], *, latency_threads: int,
            ort_latency: bool | None, echo: bool) -> SweepResult:
    require("scipy", purpose="the sweep's statistics")
    require("matplotlib", purpose="the sweep's plots")
    metric = spec.metric_name
    results = [_checked(sweep_dir, r) for r in collect(sweep_dir, plans, metric)]
    if results and all(r.status != "ok" for r in results) and any("not in metrics.json" in r.error for r in results):
        raise UnknownNameError(next(r.error for r in results if "not in metrics.json" in r.error))
    ort = ort_available() is None if ort_latency is None else ort_latency
    latency, info = measure_latencies(sweep_dir, results, threads=latency_threads, ort=ort)
    rows = summarize(results, latency, metric=metric, ort=info.get("ort"))
    write_results_csv(results, sweep_dir / "results.csv", metric)
    plots = write_plots(rows, results, sweep_dir, metric)
    name = sweep_dir.name
    text = write_summary_md(rows, results, sweep_dir / "summary.md", name=name, metric=metric, latency_info=info,
                            plots=plots)
    if echo:
        print_table(rows, metric, title=f"sweep {name}: {metric} (summary.md, results.csv in {sweep_dir})")
        failed = [r for r in results if r.status == "failed"]
        for r in failed:
            print(f"failed: {r.plan.run_id}: {r.error} (log: {sweep_dir / 'logs' / (r.plan.run_id + '.log')})")
        pending = sum(r.status == "pending" for r in results)
        if pending:
            print(f"{pending} run(s) not run yet; run the same command again to continue")
    return SweepResult(sweep_dir, results, rows, text)

