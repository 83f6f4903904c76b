"""Sweep results: one row per run (results.csv), one per configuration with statistics (summary.md)."""

from __future__ import annotations

import csv
import json
import math
import platform
import statistics
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visattn.sweep.execute import read_status, run_dir_of
from visattn.sweep.grid import RunPlan

ALPHA = 0.05


@dataclass
class RunResult:
    plan: RunPlan
    status: str  # "ok", "failed" or "pending"
    metric: float | None = None
    params: int | None = None
    macs: int | None = None
    train_time_s: float | None = None
    throughput: float | None = None
    error: str = ""


@dataclass
class ConfigSummary:
    config: str
    kind: str
    backbone: str
    attn: str
    hparams: dict[str, Any]
    baseline: str | None
    values: list[float] = field(default_factory=list)
    failed: int = 0
    pending: int = 0
    params: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    throughput: float | None = None
    p_value: float | None = None
    verdict: str = "n/a"

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None


def metric_value(metrics: dict[str, Any], name: str) -> float:
    """``test.acc`` -> metrics["test"]["acc"]; a missing key names what is there."""
    node: Any = metrics
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            keys = [f"{k}.{sub}" for k, v in metrics.items() if isinstance(v, dict) for sub in v]
            raise KeyError(f"metric {name!r} is not in metrics.json; numeric keys there: {', '.join(keys)}")
        node = node[part]
    return float(node)


def collect(sweep_dir: Path, plans: list[RunPlan], metric: str) -> list[RunResult]:
    results = []
    for plan in plans:
        metrics_path = run_dir_of(sweep_dir, plan.run_id) / "metrics.json"
        if metrics_path.is_file():
            metrics = json.loads(metrics_path.read_text())
            try:
                value, error, status = metric_value(metrics, metric), "", "ok"
            except KeyError as err:
                value, error, status = None, str(err.args[0]), "failed"
            results.append(RunResult(plan, status, value, metrics.get("params"), metrics.get("macs"),
                                     metrics.get("train_time_s"), metrics.get("throughput_img_s"), error))
            continue
        record = read_status(sweep_dir, plan.run_id)
        if record and record["status"] == "failed":
            results.append(RunResult(plan, "failed", error=record["error"]))
        else:
            results.append(RunResult(plan, "pending"))
    return results


def write_results_csv(results: list[RunResult], path: Path, metric: str) -> None:
    keys = list(dict.fromkeys(k for r in results for k in r.plan.hparams))
    columns = ["run_id", "config", "kind", "backbone", "attn", *keys, "seed", "metric_name", "metric", "params",
               "macs", "train_time_s", "throughput_img_s", "status", "error"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for r in results:
            p = r.plan
            writer.writerow([p.run_id, p.config, p.kind, p.backbone, p.attn, *[p.hparams.get(k, "") for k in keys],
                             p.seed, metric, "" if r.metric is None else repr(r.metric), _blank(r.params),
                             _blank(r.macs), _blank(r.train_time_s), _blank(r.throughput), r.status, r.error])


def _blank(value: Any) -> Any:
    return "" if value is None else value


def welch(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; None with fewer than 2 values on a side or no variance at all."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy.stats import ttest_ind

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # both sides constant: scipy warns and returns nan
        p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def summarize(results: list[RunResult], latency: dict[str, float]) -> list[ConfigSummary]:
    """One summary per configuration, in grid order, with Welch's t-test against its baseline."""
    rows: dict[str, ConfigSummary] = {}
    for r in results:
        p = r.plan
        row = rows.setdefault(p.config, ConfigSummary(p.config, p.kind, p.backbone, p.attn, p.hparams, p.baseline))
        if r.status == "ok" and r.metric is not None:
            row.values.append(r.metric)
            row.params, row.macs = r.params, r.macs
        elif r.status == "failed":
            row.failed += 1
        else:
            row.pending += 1
    for row in rows.values():
        ok = [r.throughput for r in results if r.plan.config == row.config and r.throughput is not None]
        row.throughput = statistics.fmean(ok) if ok else None
        row.latency_ms = latency.get(row.config)
    for row in rows.values():
        base = rows.get(row.baseline) if row.baseline else None
        if not row.values:
            row.verdict = "failed" if row.failed else "not run yet"
        elif row.config == row.baseline:
            row.verdict = "baseline"
        elif base is None or not row.values or not base.values:
            row.verdict = "n/a (no baseline)" if base is None else "n/a"
        elif len(row.values) < 2 or len(base.values) < 2:
            row.verdict = "n/a (< 2 seeds)"
        else:
            row.p_value = welch(row.values, base.values)
            if row.p_value is None:
                same = statistics.fmean(row.values) == statistics.fmean(base.values)
                row.verdict = "identical" if same else "differs (no seed variance)"
            else:
                noise = "within noise" if row.p_value >= ALPHA else "differs"
                row.verdict = f"{noise} (p={row.p_value:.2g})"
    return list(rows.values())


def human(value: float | None) -> str:
    if value is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def _delta(value: float | None, base: float | None, *, fmt: str = "human") -> str:
    if value is None or base is None:
        return "-"
    diff = value - base
    text = f"{diff:+.2f}" if fmt == "ms" else ("+" if diff >= 0 else "-") + human(abs(diff))
    return f"{text} ({100 * diff / base:+.1f}%)" if base else text


def table_rows(rows: list[ConfigSummary], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the summary table (shared by summary.md and the printed table)."""
    scale, unit = (100.0, " %") if metric.rsplit(".", 1)[-1] in ("acc", "acc5", "f1", "map", "map50") else (1.0, "")
    header = ["configuration", f"{metric}{unit} mean ± std", "n", "params", "MACs", "latency ms", "train img/s",
              f"Δ {metric}{unit}", "Δ params", "Δ MACs", "Δ latency ms", "vs baseline"]
    by_name = {r.config: r for r in rows}
    cells = []
    for r in rows:
        base = by_name.get(r.baseline) if r.baseline else None
        mean = "-" if r.mean is None else f"{scale * r.mean:.2f}"
        std = "" if r.std is None else f" ± {scale * r.std:.2f}"
        n = f"{len(r.values)}" + (f" ({r.failed} failed)" if r.failed else "") + (
            f" ({r.pending} pending)" if r.pending else "")
        dm = "-" if base is None or r.mean is None or base.mean is None or base is r else \
            f"{scale * (r.mean - base.mean):+.2f}"
        same = base is None or base is r
        cells.append([r.config, mean + std, n, human(r.params), human(r.macs),
                      "-" if r.latency_ms is None else f"{r.latency_ms:.2f}",
                      "-" if r.throughput is None else f"{r.throughput:.0f}", dm,
                      "-" if same else _delta(r.params, base.params), "-" if same else _delta(r.macs, base.macs),
                      "-" if same else _delta(r.latency_ms, base.latency_ms, fmt="ms"), r.verdict])
    return header, cells


def write_summary_md(rows: list[ConfigSummary], results: list[RunResult], path: Path, *, name: str, metric: str,
                     latency_info: dict[str, Any], plots: list[str]) -> str:
    header, cells = table_rows(rows, metric)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "pending")}
    lines = [
        f"# Sweep {name}", "",
        f"Runs: {counts['ok']} finished, {counts['failed']} failed, {counts['pending']} not run yet. "
        f"Metric: `{metric}` of each run's metrics.json (best checkpoint on the test split), mean ± sample std "
        "(n-1) over seeds.", "",
        "**Within seed noise?** Each configuration is compared with the `none` baseline of the same backbone "
        "(references: with the first backbone's) by Welch's t-test (two-sided, unequal variances: "
        f"`scipy.stats.ttest_ind(a, b, equal_var=False)`), alpha = {ALPHA}. \"within noise\" means the seeds give "
        "no evidence of a difference, not evidence that there is none: with 2-3 seeds the test only sees large "
        "effects. \"n/a\" when either side has fewer than 2 seeds.", "",
        f"Cost: params and MACs at batch 1 and the run's img_size (from metrics.json); latency is the median "
        f"forward time at batch 1 on the CPU (eval, no grad, {latency_info.get('threads', '?')} torch threads, "
        f"{latency_info.get('repeats', '?')} passes taken in turns with the other models, on "
        f"{latency_info.get('cpu', platform.machine())}) of the rebuilt model, measured after training, so it is "
        "comparable within this table only; train img/s is "
        "the training throughput from metrics.json (mean over seeds; runs may have shared the machine).", "",
        "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells), "",
    ]
    failed = [r for r in results if r.status == "failed"]
    if failed:
        lines += ["## Failed runs", "", *(f"- `{r.plan.run_id}`: {r.error}" for r in failed), ""]
    if plots:
        lines += ["## Plots", "", *(f"![{p}]({p})" for p in plots), ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def print_table(rows: list[ConfigSummary], metric: str, *, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    header, cells = table_rows(rows, metric)
    table = Table(title=title)
    for i, column in enumerate(header):
        table.add_column(column, justify="left" if i in (0, len(header) - 1) else "right", no_wrap=True)
    for row in cells:
        table.add_row(*row)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *cells, strict=True)]
    console = Console()
    console.width = max(console.width, sum(widths) + 3 * len(widths) + 1)
    console.print(table)


def rebuild_model(run_dir: Path) -> tuple[Any, tuple[int, int, int, int]]:
    """The architecture of a finished run (weights do not matter for timing) and its batch-1 input size."""
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    size, in_chans = int(config["img_size"]), int(metrics.get("in_chans", 3))
    if config.get("task") == "detect":
        from visattn.detect import build_detector

        model = build_detector(config["backbone"], attn=config.get("attn"), num_classes=int(metrics["num_classes"]),
                               neck=config.get("neck", "pan"), scale=config.get("scale", "n"), img_size=size,
                               backbone_args=config.get("backbone_args") or {})
    else:
        from visattn.build import build_model

        model = build_model(config["backbone"], attn=config.get("attn"), num_classes=int(metrics["num_classes"]),
                            in_chans=in_chans, img_size=size, backbone_args=config.get("backbone_args") or {})
    return model, (1, in_chans, size, size)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_latencies(sweep_dir: Path, results: list[RunResult], *, threads: int = 1, rounds: int = 5,
                      repeats: int = 6) -> tuple[dict[str, float], dict[str, Any]]:
    """Median batch-1 CPU latency (ms) of each configuration with a finished run; cached in ``latency.json``.

    ``threads``: torch threads while timing. One by default: a multi-threaded batch-1 pass of a small model
    is mostly thread synchronisation, and on a shared machine it degrades by 10-100x for models with many
    small ops (measured: CBAM 6.7 ms alone, 530 ms under load). The models are timed in turns (``rounds`` x
    ``repeats`` passes each, median of the round medians) so a slow spell is spread over all of them.
    """
    import torch

    from visattn.complexity import measure_latency

    path = sweep_dir / "latency.json"
    cache = json.loads(path.read_text()) if path.is_file() else {}
    if (cache.get("_info") or {}).get("threads") != threads:
        cache = {}  # timed with another thread count: not comparable
    info = cache.get("_info") or {"threads": threads, "repeats": rounds * repeats, "cpu": cpu_name()}
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
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(rounds if todo else 0):
            for config, (model, size) in todo.items():
                timing = measure_latency(model, input_size=size, warmup=2, repeats=repeats, device="cpu")
                medians[config].append(timing["median_ms"])
    finally:
        torch.set_num_threads(before)
    out.update({config: statistics.median(values) for config, values in medians.items()})
    path.write_text(json.dumps({"_info": info, **out}, indent=2))
    return out, info
