"""PNG plots of a sweep (matplotlib, Agg backend): metric vs MACs, metric per configuration, training curves.

Every plot shows each seed as its own point (a collapsed seed as a red cross), the baseline as a band
(mean ± std), intervals clipped to the metric's range, and a legend naming only what is drawn.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from visattn.extras import require
from visattn.rundir import write_figure
from visattn.sweep.report import ConfigSummary, RunResult, best_at_end, lr_curve, metric_scale, val_curve
from visattn.sweep.stats import higher_is_better, is_bounded, val_key

FILES = ("metric_vs_macs.png", "metric_per_block.png", "curves.png")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
NEAR_EQUAL_COST = 0.015  # configurations whose MACs differ by less than this fraction of the x span share a slot
SLOT_STEP = 0.025  # ... and are spread sideways by this fraction of the span

__all__ = ["FILES", "curves", "metric_per_block", "metric_vs_macs", "val_key", "write_plots"]


def _pyplot():  # noqa: ANN202
    matplotlib = require("matplotlib", purpose="the sweep's plots")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _styles(rows: list[ConfigSummary]) -> dict[str, tuple[str, str]]:
    """A distinct (colour, marker) per configuration, stable in grid order."""
    return {r.config: (f"C{i % 10}", MARKERS[i % len(MARKERS)]) for i, r in enumerate(rows)}


def _error(mean: float, std: float | None, metric: str, scale: float) -> tuple[list[float], list[float]]:
    """Asymmetric error bar for mean ± std that stays inside the metric's range ([0, 100] % when bounded)."""
    std = std or 0.0
    low, high = mean - std, mean + std
    if is_bounded(metric):
        low, high = max(low, 0.0), min(high, 1.0)
    return [scale * (mean - low)], [scale * (high - mean)]


def _baseline_bands(ax: Any, rows: list[ConfigSummary], scale: float, handles: list[Any], *,
                    vertical: bool = False) -> None:
    """A shaded mean ± std band (and a line at the mean) for each baseline configuration with results."""
    baselines = {r.baseline for r in rows if r.baseline}
    for row in rows:
        if row.config not in baselines or row.mean is None:
            continue
        std = row.std or 0.0
        colour = "0.5"
        band = ax.axhspan(scale * (row.mean - std), scale * (row.mean + std), color=colour, alpha=0.15, zorder=0,
                          label=f"{row.config} (baseline) mean ± std")
        ax.axhline(scale * row.mean, color=colour, linestyle="--", linewidth=1, zorder=0)
        handles.append(band)


def _seed_points(ax: Any, row: ConfigSummary, xs: list[float], scale: float, colour: str, marker: str) -> bool:
    """Each finished seed at ``xs[i]``, with its test-set interval when known; True when one collapsed."""
    runs = sorted(row.runs, key=lambda r: r.plan.seed)
    collapsed = False
    for x, run in zip(xs, runs, strict=True):
        if run.metric is None:
            continue
        if run.interval:
            ax.plot([x, x], [scale * run.interval[0], scale * run.interval[1]], color=colour, alpha=0.5,
                    linewidth=1, zorder=2)
        if run.collapsed:
            collapsed = True
            ax.plot(x, scale * run.metric, "x", color="red", markersize=9, markeredgewidth=2, zorder=4)
        else:
            ax.plot(x, scale * run.metric, marker, color=colour, markersize=4, alpha=0.6, markerfacecolor="none",
                    zorder=3)
    return collapsed


def _legend_extras(handles: list[Any], *, collapsed: bool, intervals: bool) -> None:
    from matplotlib.lines import Line2D

    handles.append(Line2D([], [], marker="o", linestyle="none", color="0.3", markerfacecolor="none", markersize=4,
                          label="one seed" + (" (line: its 95% test-set interval)" if intervals else "")))
    if collapsed:
        handles.append(Line2D([], [], marker="x", linestyle="none", color="red", markersize=8, markeredgewidth=2,
                              label="collapsed seed"))


def _cost_slots(rows: list[ConfigSummary]) -> dict[str, float]:
    """x position (MMACs) of each configuration: near-equal costs are spread sideways so they do not overprint."""
    shown = sorted((r for r in rows if r.mean is not None and r.macs is not None), key=lambda r: r.macs)
    if not shown:
        return {}
    xs = [r.macs / 1e6 for r in shown]
    span = max(xs[-1] - xs[0], 0.05 * xs[-1], 1e-9)
    groups: list[list[ConfigSummary]] = []
    for row, x in zip(shown, xs, strict=True):
        if groups and x - groups[-1][0].macs / 1e6 <= NEAR_EQUAL_COST * span:
            groups[-1].append(row)
        else:
            groups.append([row])
    out = {}
    step = SLOT_STEP * span
    for group in groups:
        centre = statistics.fmean(r.macs / 1e6 for r in group)
        for k, row in enumerate(group):
            out[row.config] = centre + (k - (len(group) - 1) / 2) * step
    return out


def _slot_step(slots: dict[str, float]) -> float:
    xs = list(slots.values())
    return SLOT_STEP * max(max(xs) - min(xs), 0.05 * max(xs), 1e-9) if xs else 0.0


def metric_vs_macs(rows: list[ConfigSummary], path: Path, metric: str) -> None:
    plt = _pyplot()
    scale, unit = metric_scale(metric)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    styles, slots = _styles(rows), _cost_slots(rows)
    handles: list[Any] = []
    _baseline_bands(ax, rows, scale, handles)
    collapsed = intervals = False
    spread = any(abs(slots[r.config] - r.macs / 1e6) > 1e-9 for r in rows if r.config in slots)
    for row in rows:
        if row.config not in slots:
            continue
        colour, marker = styles[row.config]
        x = slots[row.config]
        low, high = _error(row.mean, row.std, metric, scale)
        handles.append(ax.errorbar(x, scale * row.mean, yerr=[low, high], fmt=marker, color=colour, capsize=4,
                                   markersize=9, zorder=5, label=f"{row.config} ({row.macs / 1e6:.2f} MMACs)"))
        nudge = 0.35 * _slot_step(slots)  # the seeds just right of their mean, so neither hides the other
        collapsed |= _seed_points(ax, row, [x + nudge] * len(row.runs), scale, colour, marker)
        intervals |= any(r.interval for r in row.runs)
    if slots:
        _legend_extras(handles, collapsed=collapsed, intervals=intervals)
        ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_xlabel("MMACs (batch 1)" + (": near-equal costs spread sideways, exact values in the legend" if spread
                                        else ""))
    ax.set_ylabel(f"{metric}{unit} (large marker: mean ± std over seeds)")
    ax.set_title(f"{metric} vs cost")
    ax.grid(alpha=0.3)
    if is_bounded(metric):
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, 0.0), min(high, 100.0 if scale == 100 else 1.0))
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)


def metric_per_block(rows: list[ConfigSummary], path: Path, metric: str) -> None:
    """Per configuration: every seed (with its test-set interval), the mean ± std, the baseline band."""
    plt = _pyplot()
    scale, unit = metric_scale(metric)
    shown = [r for r in rows if r.mean is not None]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(shown) + 2.5), 5.5))
    styles = _styles(rows)
    handles: list[Any] = []
    _baseline_bands(ax, rows, scale, handles)
    collapsed = intervals = False
    for i, row in enumerate(shown):
        colour, marker = styles[row.config]
        k = len(row.runs)
        xs = [i + 0.3 + 0.3 * (j - (k - 1) / 2) / max(1, k - 1) for j in range(k)]  # seeds to the right of the mean
        collapsed |= _seed_points(ax, row, xs, scale, colour, marker)
        intervals |= any(r.interval for r in row.runs)
        low, high = _error(row.mean, row.std, metric, scale)
        ax.errorbar(i, scale * row.mean, yerr=[low, high], fmt=marker, color=colour, capsize=5, markersize=9,
                    zorder=5)
    if shown:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], marker="o", color="0.3", markersize=8, label="mean ± std over seeds"))
        _legend_extras(handles, collapsed=collapsed, intervals=intervals)
        ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_xticks(list(range(len(shown))), [r.config for r in shown], rotation=30, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(shown) - 0.2)
    ax.set_ylabel(f"{metric}{unit}")
    ax.set_title(f"{metric} per configuration")
    ax.grid(axis="y", alpha=0.3)
    if is_bounded(metric):
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, 0.0), min(high, 100.0 if scale == 100 else 1.0))
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)


def curves(results: list[RunResult], sweep_dir: Path, path: Path, metric: str) -> None:
    """Validation metric per epoch: thin lines per seed (dashed when collapsed) with a dot at each seed's best
    epoch, a thick line for the mean, and the learning rate (fraction of its peak) on a second axis, since a
    decaying schedule alone flattens the last epochs."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    key = val_key(metric)
    higher = higher_is_better(metric)
    fig, ax = plt.subplots(figsize=(8, 5))
    per_config: dict[str, list[tuple[dict[int, float], bool]]] = defaultdict(list)
    schedule: list[float] = []
    for r in results:
        if r.status != "ok":
            continue
        series = val_curve(sweep_dir, r.plan.run_id, key)
        if series:
            per_config[r.plan.config].append((series, r.collapsed))
            schedule = schedule or lr_curve(sweep_dir, r.plan.run_id)
    any_collapsed = False
    handles: list[Any] = []
    for i, (config, runs) in enumerate(per_config.items()):
        colour = f"C{i % 10}"
        for series, collapsed in runs:
            any_collapsed |= collapsed
            ax.plot(list(series), list(series.values()), color=colour, alpha=0.35, linewidth=1,
                    linestyle="--" if collapsed else "-")
            best = (max if higher else min)(series, key=lambda e: (series[e], e))  # the later epoch on a tie
            ax.plot(best, series[best], "o", color=colour, markersize=3.5, alpha=0.8)
        epochs = sorted(set.intersection(*(set(s) for s, _ in runs)))
        at_end = sum(best_at_end(s, higher=higher) for s, collapsed in runs if not collapsed)
        trained = sum(not collapsed for _, collapsed in runs)
        handles += ax.plot(epochs, [statistics.fmean(s[e] for s, _ in runs) for e in epochs], color=colour,
                           linewidth=2, label=f"{config} (best at the end: {at_end} of {trained})")
    ax.set_xlabel("epochs trained")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(key)
    dashed = ", dashed: collapsed" if any_collapsed else ""
    ax.set_title(f"{key} per epoch (thin: seeds, dot: a seed's best epoch{dashed}; thick: mean)", fontsize=10)
    ax.grid(alpha=0.3)
    if schedule:
        lr_ax = ax.twinx()
        # the rate at the start of epoch i (0-based) applies from i to i + 1 epochs trained
        lr_ax.plot(range(len(schedule)), schedule, color="0.5", linestyle=":", linewidth=1.5)
        lr_ax.set_ylim(0, 1.05)
        lr_ax.set_ylabel("learning rate at the epoch's start / peak", color="0.4")
        handles.append(Line2D([], [], color="0.5", linestyle=":", label="learning rate / peak (right axis)"))
    if per_config:
        ax.legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    write_figure(fig, path, dpi=110)
    plt.close(fig)


def write_plots(rows: list[ConfigSummary], results: list[RunResult], sweep_dir: Path, metric: str) -> list[str]:
    """The three PNGs in ``sweep_dir``; returns their file names."""
    metric_vs_macs(rows, sweep_dir / FILES[0], metric)
    metric_per_block(rows, sweep_dir / FILES[1], metric)
    curves(results, sweep_dir, sweep_dir / FILES[2], metric)
    return list(FILES)
