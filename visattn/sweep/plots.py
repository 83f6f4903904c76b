"""PNG plots of a sweep (matplotlib, Agg backend): metric vs MACs, metric per block, training curves."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from visattn.sweep.execute import run_dir_of
from visattn.sweep.report import ConfigSummary, RunResult

FILES = ("metric_vs_macs.png", "metric_per_block.png", "curves.png")


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def val_key(metric: str) -> str:
    """The validation column logged for ``metric``: test.acc -> val/acc (best_val and others -> val/acc)."""
    return "val/" + metric.split(".", 1)[1] if metric.startswith("test.") else "val/acc"


def metric_vs_macs(rows: list[ConfigSummary], path: Path, metric: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for row in rows:
        if row.mean is None or row.macs is None:
            continue
        marker = "s" if row.kind == "reference" else ("*" if row.attn == "none" else "o")
        ax.errorbar(row.macs / 1e6, row.mean, yerr=row.std or 0.0, fmt=marker, capsize=4, markersize=8,
                    label=row.config)
    if ax.has_data():  # a legend, not labels at the points: configurations of equal cost would overprint
        ax.legend(fontsize=8, loc="best", title="* baseline, ■ reference", title_fontsize=8)
    ax.set_xlabel("MMACs (batch 1)")
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(f"{metric} vs cost")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def metric_per_block(rows: list[ConfigSummary], path: Path, metric: str) -> None:
    plt = _pyplot()
    shown = [r for r in rows if r.mean is not None]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(shown) + 2), 5))
    backbones = list(dict.fromkeys(r.backbone if r.kind == "grid" else "reference" for r in shown))
    colours = {b: f"C{i}" for i, b in enumerate(backbones)}
    x = range(len(shown))
    ax.bar(x, [r.mean for r in shown], yerr=[r.std or 0.0 for r in shown], capsize=4,
           color=[colours[r.backbone if r.kind == "grid" else "reference"] for r in shown])
    for row in shown:
        if row.attn == "none" and row.kind == "grid":
            ax.axhline(row.mean, color=colours[row.backbone], linestyle="--", linewidth=1, alpha=0.7)
    if shown:
        low = min(r.mean - (r.std or 0.0) for r in shown)
        high = max(r.mean + (r.std or 0.0) for r in shown)
        pad = max(0.02 * abs(high), 0.1 * (high - low), 1e-3)
        ax.set_ylim(low - pad, high + pad)
    ax.set_xticks(list(x), [r.config for r in shown], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(f"{metric} (mean ± std over seeds)")
    ax.set_title(f"{metric} per configuration (dashed: none baseline)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curves(results: list[RunResult], sweep_dir: Path, path: Path, metric: str) -> None:
    """Validation metric per epoch: thin lines per seed, a thick line for the mean over seeds."""
    from visattn.train import read_metrics_csv

    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    key = val_key(metric)
    fig, ax = plt.subplots(figsize=(8, 5))
    per_config: dict[str, list[dict[int, float]]] = defaultdict(list)
    for r in results:
        if r.status != "ok":
            continue
        series: dict[int, float] = {}
        for row in read_metrics_csv(run_dir_of(sweep_dir, r.plan.run_id)):
            if row.get(key) not in (None, "") and row.get("epoch") not in (None, ""):
                series[int(row["epoch"]) + 1] = float(row[key])  # epochs trained; a resumed epoch's later value wins
        if series:
            per_config[r.plan.config].append(series)
    for i, (config, runs) in enumerate(per_config.items()):
        colour = f"C{i % 10}"
        for series in runs:
            ax.plot(list(series), list(series.values()), color=colour, alpha=0.3, linewidth=1)
        epochs = sorted(set.intersection(*(set(s) for s in runs)))
        ax.plot(epochs, [statistics.fmean(s[e] for s in runs) for e in epochs], color=colour, linewidth=2,
                label=config)
    ax.set_xlabel("epochs trained")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(key)
    ax.set_title(f"{key} per epoch (thin: seeds, thick: mean)")
    ax.grid(alpha=0.3)
    if per_config:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(rows: list[ConfigSummary], results: list[RunResult], sweep_dir: Path, metric: str) -> list[str]:
    """The three PNGs in ``sweep_dir``; returns their file names."""
    metric_vs_macs(rows, sweep_dir / FILES[0], metric)
    metric_per_block(rows, sweep_dir / FILES[1], metric)
    curves(results, sweep_dir, sweep_dir / FILES[2], metric)
    return list(FILES)
