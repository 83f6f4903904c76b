"""What attention capture costs: nothing when off, the extra softmax(QK^T) and copies when on.

For each model: forward latency (eval, no grad) with capture off, with ``record`` swapped for a bare
no-op everywhere (what the blocks would cost without any capture code but the attribute checks),
and inside ``capture()``; the number of record calls per forward; and ``record``'s own cost when off
(micro-benchmark) times that count, as a share of the forward. Variants are timed in interleaved
rounds so drift on a shared machine hits them alike. Prints a markdown table.

    .venv/bin/python benchmarks/capture_overhead.py [--rounds 7] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
import timeit
from contextlib import contextmanager

import torch

import visattn
from visattn.viz import capture

record_module = importlib.import_module("visattn.layers.record")  # where the blocks import record from

CASES = {  # name -> (backbone, attn, img_size, backbone_args)
    "resnet18 + cbam": ("resnet18", "cbam", 112, {}),
    "resnet18 + stn(input) + se": ("resnet18", ["se", {"block": "stn", "at": "input"}], 112, {}),
    "vit_tiny + mhsa": ("vit_tiny", "mhsa", 112, {}),
    "swin_t (half width) + eca": ("swin_t", "eca", 112, {"embed_dim": 48, "num_heads": (2, 4, 8, 16)}),
}
MODULES_USING_RECORD = ["visattn.attention.se", "visattn.attention.eca", "visattn.attention.cbam",
                        "visattn.attention.stn", "visattn.attention.mhsa", "visattn.backbones.vit",
                        "visattn.backbones.swin"]


@contextmanager
def bare_record():
    """Every block's ``record`` replaced by a function that does nothing at all."""
    def noop(module, name, value) -> None:  # noqa: ANN001
        return None

    saved = {name: sys.modules[name].record for name in MODULES_USING_RECORD}
    try:
        for name in MODULES_USING_RECORD:
            sys.modules[name].record = noop
        yield
    finally:
        for name, fn in saved.items():
            sys.modules[name].record = fn


def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000.0 * min(times)


def record_calls(model: torch.nn.Module, x: torch.Tensor) -> int:
    """How many times ``record`` runs per forward (counted with a wrapper)."""
    count = [0]
    original = record_module.record

    def counting(module, name, value) -> None:  # noqa: ANN001
        count[0] += 1
        original(module, name, value)

    saved = {name: sys.modules[name].record for name in MODULES_USING_RECORD}
    try:
        for name in MODULES_USING_RECORD:
            sys.modules[name].record = counting
        with torch.no_grad():
            model(x)
    finally:
        for name, fn in saved.items():
            sys.modules[name].record = fn
    return count[0]


def record_cost_ns() -> float:
    """Cost of one ``record`` call on a module that is not capturing, in ns."""
    block = visattn.build_attention("se", 16)
    value = torch.zeros(1)
    number = 200_000
    best = min(timeit.repeat(lambda: record_module.record(block, "channel", value), number=number, repeat=5))
    return 1e9 * best / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5, help="forwards per variant per round (min taken)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    per_call = record_cost_ns()
    print(f"record() when not capturing: {per_call:.0f} ns per call; torch {torch.__version__}, "
          f"{args.threads} threads, batch {args.batch}, min over {args.repeats} forwards x median over "
          f"{args.rounds} rounds\n")
    print("| model | off (ms) | bare no-op record (ms) | off - bare | capture on (ms) | record calls | "
          "calls x cost / forward |")
    print("|---|---|---|---|---|---|---|")
    for name, (backbone, attn, size, backbone_args) in CASES.items():
        torch.manual_seed(0)
        model = visattn.build_model(backbone, attn=attn, num_classes=10, img_size=size,
                                    backbone_args=backbone_args).eval()
        x = torch.randn(args.batch, 3, size, size)
        time_forward(model, x, 2)  # warm-up
        samples: dict[str, list[float]] = {"off": [], "bare": [], "on": []}
        for _ in range(args.rounds):
            samples["off"].append(time_forward(model, x, args.repeats))
            with bare_record():
                samples["bare"].append(time_forward(model, x, args.repeats))
            with capture(model):
                samples["on"].append(time_forward(model, x, args.repeats))
        off, bare, on = (statistics.median(samples[k]) for k in ("off", "bare", "on"))
        calls = record_calls(model, x)
        share = calls * per_call / (1e6 * off)
        print(f"| {name} | {off:.1f} | {bare:.1f} | {100 * (off - bare) / bare:+.1f}% | {on:.1f} | {calls} | "
              f"{100 * share:.4f}% |")


if __name__ == "__main__":
    main()
