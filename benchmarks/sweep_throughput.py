"""Runs per hour of a sweep under different arrangements (workers x threads, precision), alternating.

Each arrangement runs the same (shortened) sweep from scratch through ``tools/sweep.py`` in a fresh directory;
arrangements alternate round by round, so background load on a shared machine hits them alike. Reported per
arrangement: runs/hour (median, min-max over rounds, wall time of the whole sweep command including data set
generation, testing and the report's latency column) and the mean of the sweep's metric over its runs.

    .venv/bin/python benchmarks/sweep_throughput.py --rounds 2 --epochs 1 --limit 512 \\
        --arrangement 1x2:32 --arrangement 2x1:32 --arrangement 2x1:bf16-mixed
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from visattn.perf import cpu_model

REPO = Path(__file__).resolve().parents[1]


def run_sweep(arrangement: str, args: argparse.Namespace, out: Path, name: str) -> tuple[float, int, list[float]]:
    shape, _, precision = arrangement.partition(":")
    workers, threads = (int(x) for x in shape.split("x"))
    command = [sys.executable, str(REPO / "tools" / "sweep.py"), "--config", args.config, "--epochs", str(args.epochs),
               "--limit", str(args.limit), "--seeds", str(args.seeds), "--workers", str(workers),
               "--threads-per-run", str(threads), "--precision", precision or "32", "--out", str(out),
               "--name", name, *args.extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    values = []
    for metrics in (out / name).rglob("metrics.json"):
        result = json.loads(metrics.read_text())
        values.append(float(result["test"][args.metric]))
    return wall, len(values), values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/sweeps/cluttered_resnet18_blocks.yaml")
    parser.add_argument("--arrangement", action="append", required=True,
                        help="WORKERSxTHREADS[:PRECISION], e.g. 1x2:32 or 2x1:bf16-mixed (repeatable)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, default=512)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--metric", default="acc", help="key of metrics.json's test results")
    parser.add_argument("extra", nargs="*", help="further tools/sweep.py arguments (after --)")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {a: [] for a in args.arrangement}
    scores: dict[str, list[float]] = {a: [] for a in args.arrangement}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.rounds):
            for number, arrangement in enumerate(args.arrangement):
                name = f"r{index}-a{number}"
                wall, runs, values = run_sweep(arrangement, args, Path(tmp), name)
                rates[arrangement].append(3600 * runs / wall)
                scores[arrangement].extend(values)
                print(f"round {index} {arrangement}: {runs} runs in {wall:.0f} s", flush=True)
    base = args.arrangement[0]
    print(f"CPU: {cpu_model()}; sweep {args.config}, epochs {args.epochs}, limit {args.limit}, seeds {args.seeds}")
    print(f"| arrangement (workers x threads : precision) | runs/hour (median, min-max) | vs {base} (per round, "
          f"median, min-max) | mean test {args.metric} (runs) |")
    print("|---|---|---|---|")
    for arrangement in args.arrangement:
        r = rates[arrangement]
        ratios = [x / b for x, b in zip(r, rates[base], strict=True)]
        print(f"| {arrangement} | {statistics.median(r):.1f} ({min(r):.1f}-{max(r):.1f}) | "
              f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
              f"{statistics.fmean(scores[arrangement]):.3f} ({len(scores[arrangement])}) |")


if __name__ == "__main__":
    main()
