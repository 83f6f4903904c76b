"""Sweep results: one row per run (results.csv), one per configuration with statistics (summary.md)."""

from __future__ import annotations

import csv
import io
import math
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visattn.errors import UnknownNameError
from visattn.rundir import METRICS_FILE, is_regular, read_metrics, read_metrics_csv, write_atomic
from visattn.sweep.execute import read_status, run_dir_of
from visattn.sweep.grid import RunPlan
from visattn.sweep.stats import (
    ALPHA,
    NEAR_CHANCE,
    POWER,
    PROPORTIONS,
    Comparison,
    collapse_reason,
    compare,
    higher_is_better,
    holm,
    holm_detectable,
    is_bounded,
    metric_leaf,
    resolution_of,
    val_key,
    verdict,
    wilson,
)


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
    collapse_reason: str = ""  # non-empty: the run finished but did not train (see stats.collapse_reason)
    test_size: int | None = None  # images in the test split (metrics.json)
    interval: tuple[float, float] | None = None  # 95 % Wilson interval of an accuracy metric over the test images
    test_is_val: bool = False  # the data set has no test split: the metric is on the val split

    @property
    def collapsed(self) -> bool:
        return bool(self.collapse_reason)


@dataclass
class ConfigSummary:
    config: str
    kind: str
    backbone: str
    attn: str
    hparams: dict[str, Any]
    baseline: str | None
    runs: list[RunResult] = field(default_factory=list)  # finished runs, collapsed ones included, by seed
    failed: int = 0
    pending: int = 0
    params: int | None = None
    macs: int | None = None
    latency_ms: float | None = None
    ort_latency_ms: float | None = None
    ort_note: str | None = None  # why ort_latency_ms is missing
    throughput: float | None = None
    comparison: Comparison | None = None
    verdict: str = "n/a"

    @property
    def values(self) -> list[float]:
        """Every finished run's metric (collapsed runs included: they are what this configuration gave)."""
        return [r.metric for r in self.runs if r.metric is not None and math.isfinite(r.metric)]

    @property
    def trained(self) -> dict[int, float]:
        """seed -> metric of the runs that did not collapse: the values the statistical test uses."""
        return {r.plan.seed: r.metric for r in self.runs if not r.collapsed and r.metric is not None}

    @property
    def collapsed(self) -> int:
        return sum(r.collapsed for r in self.runs)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def test_is_val(self) -> bool:
        return any(r.test_is_val for r in self.runs)

    @property
    def p_value(self) -> float | None:
        return None if self.comparison is None else self.comparison.p


def metric_value(metrics: dict[str, Any], name: str) -> float:
    """``test.acc`` -> metrics["test"]["acc"]; a missing key names what is there."""
    node: Any = metrics
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            keys = [f"{k}.{sub}" for k, v in metrics.items() if isinstance(v, dict) for sub in v]
            raise UnknownNameError(f"metric {name!r} is not in metrics.json; numeric keys there: {', '.join(keys)}")
        node = node[part]
    return float("nan") if node is None else float(node)


def finished_run(plan: RunPlan, run_dir: Path, metric: str) -> RunResult:
    """The result of a run with a metrics.json: its metric, test-set interval and collapse check."""
    metrics = read_metrics(run_dir)
    try:
        value = metric_value(metrics, metric)
    except KeyError as err:
        return RunResult(plan, "failed", error=str(err.args[0]))
    size = metrics.get("test_size")
    size = size if isinstance(size, int) and size > 0 else None
    interval = None
    if size and metric_leaf(metric) in PROPORTIONS and math.isfinite(value) and 0 <= value <= 1:
        interval = wilson(value, size)
    reason = collapse_reason(metric=metric, value=value, metrics=metrics, rows=read_metrics_csv(run_dir))
    return RunResult(plan, "ok", value, metrics.get("params"), metrics.get("macs"), metrics.get("train_time_s"),
                     metrics.get("throughput_img_s"), "", reason, size, interval, bool(metrics.get("test_is_val")))


def collect(sweep_dir: Path, plans: list[RunPlan], metric: str) -> list[RunResult]:
    results = []
    for plan in plans:
        run_dir = run_dir_of(sweep_dir, plan.run_id)
        if is_regular(run_dir / METRICS_FILE):
            results.append(finished_run(plan, run_dir, metric))
            continue
        record = read_status(sweep_dir, plan.run_id)
        if record and record["status"] == "failed":
            results.append(RunResult(plan, "failed", error=record["error"]))
        else:
            results.append(RunResult(plan, "pending"))
    return results


def write_results_csv(results: list[RunResult], path: Path, metric: str) -> None:
    keys = list(dict.fromkeys(k for r in results for k in r.plan.hparams))
    columns = ["run_id", "config", "kind", "backbone", "attn", *keys, "seed", "metric_name", "metric",
               "ci95_low", "ci95_high", "test_size", "test_is_val", "collapsed", "collapse_reason", "params",
               "macs", "train_time_s", "throughput_img_s", "status", "error"]
    handle = io.StringIO(newline="")  # then written whole, atomically
    writer = csv.writer(handle)
    writer.writerow(columns)
    for r in results:
        p, (low, high) = r.plan, r.interval or (None, None)
        writer.writerow([p.run_id, p.config, p.kind, p.backbone, p.attn, *[p.hparams.get(k, "") for k in keys],
                         p.seed, metric, "" if r.metric is None else repr(r.metric), _blank(low), _blank(high),
                         _blank(r.test_size), r.test_is_val if r.status == "ok" else "",
                         r.collapsed if r.status == "ok" else "", r.collapse_reason, _blank(r.params),
                         _blank(r.macs), _blank(r.train_time_s), _blank(r.throughput), r.status, r.error])
    write_atomic(path, handle.getvalue())


def _blank(value: Any) -> Any:
    return "" if value is None else value


def welch(a: list[float], b: list[float]) -> float | None:
    """Two-sided p-value of Welch's t-test; None with fewer than 2 values on a side or no variance at all."""
    result = compare(dict(enumerate(a)), {len(a) + i: v for i, v in enumerate(b)})  # distinct keys: never paired
    return None if result is None else result.p


def metric_scale(metric: str) -> tuple[float, str]:
    """Metrics in [0, 1] are shown in %."""
    return (100.0, " %") if is_bounded(metric) else (1.0, "")


def summarize(results: list[RunResult], latency: dict[str, float], *, metric: str = "test.acc",
              ort: dict[str, Any] | None = None) -> list[ConfigSummary]:
    """One summary per configuration, in grid order, each compared with its baseline (paired by seed where the
    grid allows, else Welch), p-values Holm-adjusted over the configurations that share a baseline."""
    rows: dict[str, ConfigSummary] = {}
    for r in results:
        p = r.plan
        row = rows.setdefault(p.config, ConfigSummary(p.config, p.kind, p.backbone, p.attn, p.hparams, p.baseline))
        if r.status == "ok":
            row.runs.append(r)
            row.params, row.macs = r.params, r.macs
        elif r.status == "failed":
            row.failed += 1
        else:
            row.pending += 1
    for row in rows.values():
        ok = [r.throughput for r in row.runs if r.throughput is not None]
        row.throughput = statistics.fmean(ok) if ok else None
        row.latency_ms = latency.get(row.config)
        if ort is not None:  # {"ms": {config: ms}, "notes": {config: why not}, "unavailable": why none}
            row.ort_latency_ms = (ort.get("ms") or {}).get(row.config)
            row.ort_note = ort.get("unavailable") or (ort.get("notes") or {}).get(row.config)
    for row in rows.values():
        base = rows.get(row.baseline) if row.baseline else None
        if row.config == row.baseline:
            continue
        if base is not None and row.trained and base.trained:
            sizes = [r.test_size for r in row.runs + base.runs if not r.collapsed]
            row.comparison = compare(row.trained, base.trained, resolution=resolution_of(metric, sizes))
    families: dict[str, list[ConfigSummary]] = {}
    for row in rows.values():
        if row.comparison is not None:
            families.setdefault(str(row.baseline), []).append(row)
    for family in families.values():
        tested = sum(r.comparison.p is not None for r in family)  # Holm's m
        for row, p_adj in zip(family, holm([r.comparison.p for r in family]), strict=True):
            row.comparison.p_adj = p_adj
            holm_detectable(row.comparison, tested)
    scale = metric_scale(metric)[0]
    for row in rows.values():
        row.verdict = _verdict(row, rows.get(row.baseline) if row.baseline else None, metric=metric, scale=scale)
    return list(rows.values())


def _verdict(row: ConfigSummary, base: ConfigSummary | None, *, metric: str, scale: float) -> str:
    notes = []
    if row.collapsed:
        notes.append(f"{row.collapsed} of {len(row.runs)} seeds collapsed")
    if base is not None and base is not row and base.collapsed:
        notes.append(f"baseline: {base.collapsed} of {len(base.runs)} seeds collapsed")
    prefix = "; ".join(notes) + ("; " if notes else "")
    if not row.runs:
        return "failed" if row.failed else "not run yet"
    if row.config == row.baseline:
        return prefix + "baseline"
    if base is None:
        return prefix + "n/a (no baseline)"
    if row.comparison is None:
        if not base.runs:
            return prefix + "n/a (baseline not run)"
        return prefix + "n/a (< 2 trained seeds on a side)"
    return prefix + verdict(row.comparison, metric=metric, scale=scale)


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


def _pm(value: float | None, scale: float) -> str:
    return "-" if value is None else f"{scale * value:.2f}"


def _per_seed(row: ConfigSummary, scale: float) -> str:
    """Every finished seed's value, collapsed ones marked ✗ (so one collapse shows as one collapse)."""
    runs = sorted(row.runs, key=lambda r: r.plan.seed)
    return " · ".join(f"s{r.plan.seed} {_pm(r.metric, scale)}{' ✗' if r.collapsed else ''}" for r in runs) or "-"


def accuracy_rows(rows: list[ConfigSummary], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the metric table: per-seed values, median, mean ± std, test-set noise, the difference
    to the baseline with its 95 % CI, the test used and the verdict."""
    scale, unit = metric_scale(metric)
    header = ["configuration", f"{metric}{unit} per seed (✗ collapsed)", "median", "mean ± std", "n",
              "test-set ±95%", f"Δ vs baseline{unit} [95% CI]", "test", "verdict"]
    cells = []
    for r in rows:
        n = f"{len(r.runs)}" + (f" ({r.failed} failed)" if r.failed else "") + (
            f" ({r.pending} pending)" if r.pending else "")
        halves = [(hi - lo) / 2 for lo, hi in (x.interval for x in r.runs if x.interval)]
        noise = f"±{scale * statistics.median(halves):.2f}" if halves else "-"
        if r.test_is_val:
            noise += " (val)¹"
        c = r.comparison
        delta = "-" if c is None else f"{scale * c.diff:+.2f} [{scale * c.ci[0]:+.2f}, {scale * c.ci[1]:+.2f}]"
        cells.append([r.config, _per_seed(r, scale), _pm(r.median, scale),
                      _pm(r.mean, scale) + ("" if r.std is None else f" ± {scale * r.std:.2f}"), n, noise, delta,
                      "-" if c is None else c.label, r.verdict])
    return header, cells


def ort_footnotes(rows: list[ConfigSummary]) -> list[str]:
    """The distinct reasons an ``ort latency ms`` cell reads n/a; cell marks ``[k]`` index this list from 1."""
    return list(dict.fromkeys(r.ort_note for r in rows if r.ort_latency_ms is None and r.ort_note))


def cost_rows(rows: list[ConfigSummary], *, ort: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the cost table (params, MACs, latency, throughput and their differences).

    ``ort``: add the onnxruntime latency next to the eager one; a missing value reads ``n/a [k]``, k being its
    reason's number in :func:`ort_footnotes`.
    """
    header = ["configuration", "params", "MACs", "latency ms", *(["ort latency ms"] if ort else []), "train img/s",
              "Δ params", "Δ MACs", "Δ latency ms"]
    notes = {note: k for k, note in enumerate(ort_footnotes(rows), start=1)}
    by_name = {r.config: r for r in rows}
    cells = []
    for r in rows:
        base = by_name.get(r.baseline) if r.baseline else None
        same = base is None or base is r
        ort_cell = (f"{r.ort_latency_ms:.2f}" if r.ort_latency_ms is not None
                    else f"n/a [{notes[r.ort_note]}]" if r.ort_note in notes else "-")
        cells.append([r.config, human(r.params), human(r.macs),
                      "-" if r.latency_ms is None else f"{r.latency_ms:.2f}", *([ort_cell] if ort else []),
                      "-" if r.throughput is None else f"{r.throughput:.0f}",
                      "-" if same else _delta(r.params, base.params), "-" if same else _delta(r.macs, base.macs),
                      "-" if same else _delta(r.latency_ms, base.latency_ms, fmt="ms")])
    return header, cells


def _markdown(header: list[str], cells: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells)]


def statistics_note(rows: list[ConfigSummary], metric: str) -> list[str]:
    """What the verdicts mean and what the seeds can resolve, in words."""
    scale, unit = metric_scale(metric)
    families: dict[str, int] = {}
    for r in rows:
        if r.comparison is not None and r.comparison.p is not None:
            families[str(r.baseline)] = families.get(str(r.baseline), 0) + 1
    tests = sorted({r.comparison.test for r in rows if r.comparison is not None})
    mdds = [r.comparison.mdd if r.comparison.mdd_holm is None else r.comparison.mdd_holm
            for r in rows if r.comparison is not None]
    levels = ", ".join(f"alpha = {ALPHA} / {m} = {ALPHA / m:.2g} against `{b}`" for b, m in families.items())
    lines = [
        "**Verdicts.** Each configuration is compared with the `none` baseline of its backbone (references: with "
        "the first backbone's). Runs with the same seed see the same data order and augmentation, so wherever "
        "both have at least two seeds in common the test is **paired**: the per-seed differences, their mean with a "
        "95 % t confidence interval, and `scipy.stats.ttest_rel`. Otherwise it is **Welch's** t-test "
        "(`scipy.stats.ttest_ind(equal_var=False)`, CI of the difference of means). The `test` column says which. "
        "P-values are two-sided and **Holm–Bonferroni adjusted** over all configurations compared with the same "
        f"baseline ({', '.join(f'{m} against `{b}`' for b, m in families.items()) or 'no comparison yet'}). "
        f"\"better\" / \"worse\" only when the adjusted p < {ALPHA}. Otherwise \"inconclusive\", with the "
        f"**minimum detectable difference**: the true difference a test of these seeds would find with "
        f"{POWER:.0%} power at the level the adjusted verdict needs, alpha / m for m comparisons against the same "
        f"baseline ({levels or f'alpha = {ALPHA}'}). Holm calls any comparison whose raw p is below alpha / m, "
        "whatever the others give, so a true difference of that size is called with at least that power (two-sided; "
        "noncentral t from the observed sd of the paired differences, or from Welch's standard error with the "
        "Welch–Satterthwaite degrees of freedom). Inconclusive is not \"no effect\": differences smaller than that "
        "number are invisible to this table. A configuration whose seeds all moved by the same amount, equal at the "
        "metric's resolution (1 / test images for an accuracy; otherwise 1e-5 of the value: float32 rounding), has "
        "no seed variance and so no p-value; its verdict says so.",
    ]
    if mdds:
        lines[-1] += (f" Here it ranges from {scale * min(mdds):.2f} to {scale * max(mdds):.2f}"
                      f"{' points' if scale == 100 else ''} ({', '.join(tests)} tests).")
    lines += [
        "",
        "**Collapsed runs** (✗, `collapsed` and `collapse_reason` in results.csv): a non-finite metric or loss, an "
        f"accuracy at or near chance (less than {NEAR_CHANCE:.0%} of the way from chance to 100 %), or a "
        "validation metric that never rose above its first epoch's value (3+ epochs) and stayed that low (near "
        f"chance; a metric such as mAP: below {NEAR_CHANCE:.0%}). A run at its best from the first epoch at a good "
        "value, as a fine-tuned network can be, did not collapse. Collapsed runs are shown per seed and "
        "counted in the median and mean ± std (that is what the configuration gave), but left out of the test, "
        "which assumes ordinary seed noise; the verdict then starts with \"k of n seeds collapsed\" (a pair "
        "with a collapsed side is dropped).",
        "",
        "**Test-set noise.** `test-set ±95%` is the median half-width of each run's 95 % Wilson interval for "
        "the accuracy on its test images (per run in results.csv, `ci95_low`/`ci95_high`); compare it with the "
        "seed std. mAP has no such interval here: a bootstrap over test images would need per-image "
        "predictions, which runs do not store.",
    ]
    return lines


# A mean val metric that moved by more than this over the last two epochs (points of %; % of its value for
# unbounded metrics) was still moving when training stopped.
FLAT_POINTS = 1.0
# A learning rate at the last epoch's start at most this fraction of its peak: the schedule alone flattens the curve.
SMALL_LR = 0.1


def val_curve(sweep_dir: Path, run_id: str, key: str) -> dict[int, float]:
    """A run's validation metric by epochs trained, from its metrics.csv (a resumed epoch's later value wins)."""
    series: dict[int, float] = {}
    for row in read_metrics_csv(run_dir_of(sweep_dir, run_id)):
        if row.get(key) not in (None, "") and row.get("epoch") not in (None, ""):
            series[int(row["epoch"]) + 1] = float(row[key])
    return series


def lr_curve(sweep_dir: Path, run_id: str) -> list[float]:
    """A run's learning rate at the start of each epoch as a fraction of its peak, from the ``lr-*`` column that
    Lightning's LearningRateMonitor logs once per epoch (the first parameter group's); [] when none was logged."""
    rows = read_metrics_csv(run_dir_of(sweep_dir, run_id))
    column = next((k for row in rows for k in row if k and k.startswith("lr-")), None)
    lrs = [float(row[column]) for row in rows if column and row.get(column) not in (None, "")]
    return [lr / max(lrs) for lr in lrs] if lrs and max(lrs) > 0 else []


def lr_at_last_epoch(sweep_dir: Path, run_ids: list[str]) -> float | None:
    """Median over runs of the learning rate at the start of the last epoch as a fraction of its peak."""
    fractions = [curve[-1] for curve in (lr_curve(sweep_dir, run_id) for run_id in run_ids) if curve]
    return statistics.median(fractions) if fractions else None


def best_at_end(curve: dict[int, float], *, higher: bool) -> bool:
    """The run's best validation value is at its last epoch (a tie with an earlier epoch counts)."""
    last = curve[max(curve)]
    return last >= max(curve.values()) if higher else last <= min(curve.values())


def convergence_rows(results: list[RunResult], sweep_dir: Path, metric: str) -> tuple[list[str], list[list[str]]]:
    """Per configuration, the mean validation metric of its non-collapsed seeds at the last three epochs, whether
    it was flat over the last two (a configuration still improving when training stopped is under-trained, and its
    test metric says what this budget gives, not what the block can give), and how many seeds had their best
    validation value at the last epoch (best: highest, or lowest for a loss)."""
    key = val_key(metric)
    higher = higher_is_better(metric)
    scale, unit = metric_scale(metric)
    per_config: dict[str, list[dict[int, float]]] = {}
    for r in results:
        if r.status == "ok" and not r.collapsed:
            per_config.setdefault(r.plan.config, []).append(val_curve(sweep_dir, r.plan.run_id, key))
    header = ["configuration", "seeds", "epochs", f"{key}{unit} (last three epochs)", "change over the last two",
              "trained?", "best val at the last epoch"]
    cells = []
    for config, curves in per_config.items():
        epochs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if len(epochs) < 3:
            continue
        means = [statistics.fmean(c[e] for c in curves) * scale for e in epochs[-3:]]
        change = means[-1] - means[0]
        limit = FLAT_POINTS if scale == 100.0 else abs(means[-1]) * FLAT_POINTS / 100
        improving = change > 0 if higher else change < 0
        moving = ("still rising", "falling") if higher else ("still falling", "rising")
        state = "flat" if abs(change) <= limit else moving[0] if improving else moving[1]
        at_end = sum(best_at_end(c, higher=higher) for c in curves)
        cells.append([config, str(len(curves)), str(epochs[-1]), " / ".join(f"{m:.2f}" for m in means),
                      f"{change:+.2f}", state, f"{at_end} of {len(curves)}"])
    return header, cells


def convergence_note(results: list[RunResult], sweep_dir: Path, metric: str) -> str:
    """The "Trained to the end?" section's text: what the table shows and what it cannot show."""
    limit = f"{FLAT_POINTS:g} point" if metric_scale(metric)[0] == 100.0 else f"{FLAT_POINTS:g} %"
    direction = "rising" if higher_is_better(metric) else "falling (lower is better)"
    fraction = lr_at_last_epoch(sweep_dir, [r.plan.run_id for r in results if r.status == "ok" and not r.collapsed])
    schedule = ("the learning rate decays" if fraction is None else
                f"the learning rate at the start of the last epoch is {100 * fraction:.2g} % of its peak (median "
                "over runs of the `lr-*` column in each run's logs/metrics.csv)")
    small = fraction is None or fraction <= SMALL_LR
    return (f"Mean `{val_key(metric)}` over the seeds that did not collapse at the last three epochs. \"flat\": it "
            f"moved by at most {limit} over the last two epochs; a configuration still {direction} when training "
            "stopped is under-trained at this budget, so its test metric says what the budget gives, not what the "
            "block can give. `best val at the last epoch` counts the seeds whose best validation value came at "
            "their last epoch (ties count). What this can and cannot show: under this sweep's schedule "
            f"{schedule}, so the last epochs take {'small' if small else 'smaller'} steps and a flat mean curve is "
            f"{'largely' if small else 'partly'} built in by the schedule, not a sign of convergence; seeds that "
            "are best at the last epoch were still improving when the learning rate ran out (many of them point to "
            "a budget that is too short), but few of them do not show that more epochs would not help: only a "
            "longer run can show that.")


def write_summary_md(rows: list[ConfigSummary], results: list[RunResult], path: Path, *, name: str, metric: str,
                     latency_info: dict[str, Any], plots: list[str]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "failed", "pending")}
    collapsed = [r for r in results if r.status == "ok" and r.collapsed]
    lines = [
        f"# Sweep {name}", "",
        f"Runs: {counts['ok']} finished ({len(collapsed)} collapsed), {counts['failed']} failed, "
        f"{counts['pending']} not run yet. Metric: `{metric}` of each run's metrics.json (best checkpoint on the "
        "test split); mean ± sample std (n-1) over seeds.", "",
        *_markdown(*accuracy_rows(rows, metric)), "",
        *statistics_note(rows, metric), "",
        "## Cost", "",
        f"Params and MACs at batch 1 and the run's img_size (from metrics.json); latency is the median "
        f"forward time at batch 1 on the CPU (eval, no grad, {latency_info.get('threads', '?')} torch threads, "
        f"{latency_info.get('repeats', '?')} passes taken in turns with the other models, on "
        f"{latency_info.get('cpu', platform.machine())}) of the rebuilt model, measured after training, so it is "
        "comparable within this table only; train img/s is the training throughput from metrics.json (mean over "
        "seeds; runs may have shared the machine).", "",
    ]
    ort = latency_info.get("ort")
    if ort is not None:
        lines[-2] += (
            f" `ort latency ms` is the same model exported to ONNX by visattn's own exporter (torch dynamo, "
            f"opset {ort.get('opset', '?')}) and run by onnxruntime {ort.get('version') or '(not installed)'} "
            f"(`InferenceSession.run`, CPUExecutionProvider, batch 1, intra_op_num_threads = "
            f"{ort.get('threads', '?')}), timed in the same turns as the eager passes; median likewise.")
    lines += [*_markdown(*cost_rows(rows, ort=ort is not None)), ""]
    if ort is not None and ort_footnotes(rows):
        lines += [*(f"[{k}] ort latency n/a: {note}" + ("  " if k < len(ort_footnotes(rows)) else "")
                    for k, note in enumerate(ort_footnotes(rows), start=1)), ""]
    header, cells = convergence_rows(results, path.parent, metric)  # summary.md sits in the sweep directory
    if cells:
        lines += ["## Trained to the end?", "", convergence_note(results, path.parent, metric), "",
                  *_markdown(header, cells), ""]
    if collapsed:
        lines += ["## Collapsed runs", "", *(f"- `{r.plan.run_id}`: {r.collapse_reason}" for r in collapsed), ""]
    failed = [r for r in results if r.status == "failed"]
    if failed:
        lines += ["## Failed runs", "", *(f"- `{r.plan.run_id}`: {r.error}" for r in failed), ""]
    if any(r.test_is_val for r in results):
        lines += ["¹ The data set has no test split, so these runs were tested on their val split, the split that "
                  "chose their best checkpoint: the metric is optimistic (`test_is_val` in metrics.json and "
                  "results.csv).", ""]
    if plots:
        lines += ["## Plots", "", *(f"![{p}]({p})" for p in plots), ""]
    text = "\n".join(lines)
    write_atomic(path, text)
    return text


def print_table(rows: list[ConfigSummary], metric: str, *, title: str, console: Any = None) -> None:
    """The two tables on the console. A terminal's width is kept (the first and last, text, columns wrap); a log
    (no terminal) gets every row on one line, however wide."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    with_ort = any(r.ort_latency_ms is not None or r.ort_note for r in rows)
    for caption, (header, cells) in ((title, accuracy_rows(rows, metric)), ("cost", cost_rows(rows, ort=with_ort))):
        table = Table(title=caption)
        for i, column in enumerate(header):
            text = i in (0, len(header) - 1)
            table.add_column(column, justify="left" if text else "right", no_wrap=not (text and console.is_terminal))
        for row in cells:
            table.add_row(*row)
        if not console.is_terminal:
            widths = [max(len(str(c)) for c in column) for column in zip(header, *cells, strict=True)]
            console.width = max(console.width, sum(widths) + 3 * len(widths) + 1)
        console.print(table)
