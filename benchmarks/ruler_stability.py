"""Is the speed ruler stable? The matmul peak and the share of it one fixed training run reaches, measured with the
other core idle (as far as this script can make it: it starts nothing there) and with the other core loaded by a
busy process this script starts (a ``torch.mm`` loop pinned there with ``taskset``), alternating (issue 21).

This process is pinned to core 0 and runs 1 torch thread, as a sweep run does. Per round and condition it measures:

- the peak as ``visattn.perf.measure_matmul_peak`` now does it (best over sizes 256-2048 x 3 rounds), and the old
  way (size 2048 only, best call over ~1 s) for comparison;
- a fixed training run: ResNet-18 (base width 32) at 64 px, batch 64, ``--precision`` (default bf16-mixed),
  ``--steps`` timed steps; its achieved GFLOP/s divided by each peak is the share a run would report.

    .venv/bin/python benchmarks/ruler_stability.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from visattn import build_model
from visattn.perf import PEAK_SIZES, cpu_model, measure_matmul_peak, precision_dtype, profile_training

BUSY = "import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\nwhile True:\n    a @ a\n"


def old_peak(dtype: str) -> float:
    """The ruler before issue 21: one size (2048), best call over about one second."""
    return measure_matmul_peak(dtype, sizes=(2048,), seconds=1.0, rounds=1)


def loadavg() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--core", type=int, default=0, help="core this process runs on; the busy one gets another")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    other = next(c for c in cores if c != args.core)
    os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(1)
    dtype = precision_dtype(args.precision)
    model = build_model("resnet18", num_classes=10, img_size=64, backbone_args={"base_width": 32})
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, this process on core {args.core}, busy loop on core "
          f"{other}, {args.precision}, load average {loadavg()}", flush=True)
    for name in ("fp32", "bf16"):  # what each size reaches (the old ruler used 2048 alone)
        rates = {size: measure_matmul_peak(name, sizes=(size,), seconds=0.5, rounds=1) / 1e9 for size in PEAK_SIZES}
        print(f"{name} best torch.mm GFLOP/s by size (1 thread, other core not loaded by this script): "
              + ", ".join(f"{size}: {rate:.0f}" for size, rate in rates.items()), flush=True)
    results: dict[str, dict[str, list[float]]] = {c: {"peak": [], "old_peak": [], "gflops": []}
                                                   for c in ("idle", "busy")}
    for _ in range(args.rounds):
        for condition in ("idle", "busy"):
            busy = None
            if condition == "busy":
                busy = subprocess.Popen(["taskset", "-c", str(other), sys.executable, "-c", BUSY])
                time.sleep(2.0)  # let it start
            try:
                peak = measure_matmul_peak(dtype)
                old = old_peak(dtype)
                run = profile_training(model, input_size=(64, 3, 64, 64), precision=args.precision,
                                       steps=args.steps, warmup=1)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            results[condition]["peak"].append(peak / 1e9)
            results[condition]["old_peak"].append(old / 1e9)
            results[condition]["gflops"].append(run["train_gflops_s"])
            print(f"{condition}: peak {peak / 1e9:.0f} GFLOP/s (old way {old / 1e9:.0f}), run "
                  f"{run['train_gflops_s']:.1f} GFLOP/s = {100 * run['train_gflops_s'] * 1e9 / peak:.1f} % of the "
                  f"peak ({100 * run['train_gflops_s'] * 1e9 / old:.1f} % of the old one); load {loadavg()}",
                  flush=True)

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"

    print("\n| condition | peak GFLOP/s (new) | peak GFLOP/s (old: 2048 only) | run GFLOP/s | share of new peak % "
          "| share of old peak % |\n|---|---|---|---|---|---|")
    for condition, r in results.items():
        share = [100 * g / p for g, p in zip(r["gflops"], r["peak"], strict=True)]
        old_share = [100 * g / p for g, p in zip(r["gflops"], r["old_peak"], strict=True)]
        print(f"| {condition} | {med(r['peak'])} | {med(r['old_peak'])} | {med(r['gflops'])} | {med(share)} | "
              f"{med(old_share)} |")
    idle, busy = results["idle"], results["busy"]
    print(f"\nbusy/idle: peak {statistics.median(busy['peak']) / statistics.median(idle['peak']):.3f}, run GFLOP/s "
          f"{statistics.median(busy['gflops']) / statistics.median(idle['gflops']):.3f}; load average {loadavg()}")


if __name__ == "__main__":
    main()
