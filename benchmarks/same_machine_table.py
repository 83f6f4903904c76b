"""Paired comparisons between chosen configurations of a sweep, with the sweep's own statistics (issue 19).

The sweep report compares every configuration with *the* baseline of its backbone. When a grown sweep adds runs
made on another CPU (bf16 results differ between CPUs), the fair baseline for the new rows is a re-run of the
baseline on the same CPU. This prints, for each ``--compare A:B``, A minus B paired over their common seeds
(Welch when fewer than two are shared), Holm-adjusted over the comparisons asked for, with the difference each
comparison would detect with 80 % power at the Holm level (``visattn.sweep.stats``).

    python benchmarks/same_machine_table.py benchmarks/results/cluttered-r18w32-blocks-v2 \
        --compare se+identity:none-rerun eca+identity:none-rerun cbam+identity:none-rerun \
                  eca-rerun:none-rerun cbam-rerun:none-rerun eca+identity:eca-rerun cbam+identity:cbam-rerun
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from visattn.sweep.stats import compare, holm, holm_detectable, resolution_of, verdict

METRIC = "test.acc"


def per_seed(sweep: Path, backbone: str) -> tuple[dict[str, dict[int, float]], dict[str, str], list[int]]:
    """{label: {seed: test acc}}, {label: CPU}, test-set sizes, from the finished runs of ``sweep``."""
    values: dict[str, dict[int, float]] = {}
    cpus: dict[str, str] = {}
    sizes: list[int] = []
    for metrics_file in sorted(sweep.glob(f"runs/{backbone}-*/metrics.json")):
        match = re.fullmatch(rf"{re.escape(backbone)}-(.+)-s(\d+)", metrics_file.parent.name)
        if match is None:
            continue
        metrics = json.loads(metrics_file.read_text())
        acc = (metrics.get("test") or {}).get("acc")
        if acc is None:
            continue
        label, seed = match.group(1), int(match.group(2))
        values.setdefault(label, {})[seed] = float(acc)
        cpus[label] = str(metrics.get("cpu", "?"))
        if metrics.get("test_size"):
            sizes.append(int(metrics["test_size"]))
    return values, cpus, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--backbone", default="resnet18", help="the run-id prefix (default: resnet18)")
    parser.add_argument("--compare", nargs="+", required=True, metavar="A:B",
                        help="configuration labels (run ids without backbone and seed), A minus B")
    args = parser.parse_args()
    values, cpus, sizes = per_seed(args.sweep, args.backbone)
    pairs = []
    for item in args.compare:
        first, _, second = item.partition(":")
        missing = [label for label in (first, second) if label not in values]
        if missing:
            raise SystemExit(f"error: no finished runs for {', '.join(missing)}; finished: {', '.join(sorted(values))}")
        pairs.append((first, second))
    resolution = resolution_of(METRIC, sizes)
    comparisons = [compare(values[a], values[b], resolution=resolution) for a, b in pairs]
    adjusted = holm([c.p if c is not None else None for c in comparisons])
    family = sum(p is not None for p in adjusted)
    print("| comparison | seeds (A / B) | A % per seed | B % per seed | A − B [95% CI] | test | verdict (Holm over "
          f"{family}) |")
    print("|---|---|---|---|---|---|---|")
    for (a, b), comparison, p_adj in zip(pairs, comparisons, adjusted, strict=True):
        shown = [" · ".join(f"{100 * v:.2f}" for _, v in sorted(values[x].items())) for x in (a, b)]
        if comparison is None:
            print(f"| {a} − {b} | {len(values[a])} / {len(values[b])} | {shown[0]} | {shown[1]} | - | - | "
                  "too few seeds |")
            continue
        comparison.p_adj = p_adj
        holm_detectable(comparison, family)
        low, high = comparison.ci
        print(f"| {a} − {b} | {len(values[a])} / {len(values[b])} | {shown[0]} | {shown[1]} | "
              f"{100 * comparison.diff:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] | {comparison.label} | "
              f"{verdict(comparison, metric=METRIC, scale=100.0)} |")
    print()
    print("CPUs: " + "; ".join(f"{label}: {cpu}" for label, cpu in sorted(cpus.items())))


if __name__ == "__main__":
    main()
