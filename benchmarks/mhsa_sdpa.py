"""Measure visattn's mhsa (SDPA) against the plain softmax(QK^T)V formulation on CPU.

Each (implementation, N) runs in a fresh subprocess so the peak resident memory it reports
(ru_maxrss after the forward minus before it) belongs to that case alone. Prints a markdown table.

    .venv/bin/python benchmarks/mhsa_sdpa.py [--repeats 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def run_case(impl: str, side: int, channels: int, repeats: int, threads: int) -> dict:
    import torch

    import visattn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    block = visattn.build_attention("mhsa", channels, heads=8, pos_encoding="none").eval()
    x = torch.randn(1, channels, side, side)
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)

    def plain(tok: torch.Tensor) -> torch.Tensor:
        batch, length, chans = tok.shape
        q, k, v = block.qkv(tok).view(batch, length, 3, block.heads, block.head_dim).permute(2, 0, 3, 1, 4)
        weights = (q @ k.transpose(-2, -1) * block.head_dim**-0.5).softmax(-1)  # (B, heads, N, N)
        return block.proj((weights @ v).transpose(1, 2).reshape(batch, length, chans))

    forward = block.attend if impl == "sdpa" else plain
    with torch.no_grad():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        forward(tokens)  # warm-up, also the peak-memory measurement
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward(tokens)
            times.append(time.perf_counter() - start)
    return {"impl": impl, "n": side * side, "ms": statistics.median(times) * 1e3, "peak_mib": peak_kib / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--case", nargs=2, metavar=("IMPL", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case[0], int(args.case[1]), args.channels, args.repeats, args.threads)))
        return
    rows = {}
    for side in (14, 28, 56):
        for impl in ("sdpa", "plain"):
            out = subprocess.run(
                [sys.executable, __file__, "--case", impl, str(side), "--repeats", str(args.repeats),
                 "--threads", str(args.threads), "--channels", str(args.channels)],
                check=True, capture_output=True, text=True,
            ).stdout
            rows[(side, impl)] = json.loads(out.strip().splitlines()[-1])
    print(f"C={args.channels}, 8 heads, batch 1, {args.threads} threads, median of {args.repeats}\n")
    print("| N | SDPA ms | plain ms | speed-up | SDPA peak MiB | plain peak MiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for side in (14, 28, 56):
        sdpa, plain = rows[(side, "sdpa")], rows[(side, "plain")]
        print(f"| {side * side} | {sdpa['ms']:.2f} | {plain['ms']:.2f} | {plain['ms'] / sdpa['ms']:.2f}x "
              f"| {sdpa['peak_mib']:.1f} | {plain['peak_mib']:.1f} |")


if __name__ == "__main__":
    main()
