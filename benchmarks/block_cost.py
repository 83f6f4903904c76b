"""A block's own training cost at the flagship's slot shapes, before and after issue 21, alternating (CPU clock).

The whole-model comparison (``attention_tax.py``) subtracts two ~200-300 ms step times to find a block's few
milliseconds, which a loaded machine blurs by +-5 % or more. This times what the block itself adds: forward +
backward of the block alone on a random activation of each slot shape the half-width ResNet-18 gives it at 64 px,
batch 64 ((64, 32, 16, 16), (64, 64, 8, 8), (64, 128, 4, 4), (64, 256, 2, 2); two slots each), in fp32 and under
bf16 autocast (with a bf16 activation, as a conv under autocast hands it over), against an identity "block" that
only pays for the input's clone and the backward's ones. Each repeat times every variant in turn; the table gives
per-step sums over the 8 slots (median of the repeats, and min-max).

    .venv/bin/python benchmarks/block_cost.py --blocks se eca cbam mhsa --repeats 20
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from tax_before import apply_variant
from torch import nn

import visattn

SLOTS = [(64, 32, 16, 16), (64, 64, 8, 8), (64, 128, 4, 4), (64, 256, 2, 2)]  # each twice in ResNet-18


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", nargs="+", default=["se", "eca", "cbam", "mhsa"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calls", type=int, default=3, help="forward + backward calls per timing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    clock = time.thread_time
    print("| block | precision | identity ms/step | before ms/step (median, min-max) | after ms/step (median, min-max) "
          "| after / before (median of repeats, min-max) |\n|---|---|---|---|---|---|")
    for name in args.blocks:
        for precision in ("fp32", "bf16"):
            totals: dict[str, list[float]] = {"identity": [0.0] * args.repeats, "before": [0.0] * args.repeats,
                                              "after": [0.0] * args.repeats}
            for shape in SLOTS:
                torch.manual_seed(0)
                after = visattn.build_attention(name, shape[1]).train()
                variants = {"identity": nn.Identity(), "before": apply_variant(copy.deepcopy(after), "before"),
                            "after": after}
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                x0 = torch.randn(shape).to(dtype)

                def run(module: nn.Module, x0: torch.Tensor = x0, precision: str = precision) -> None:
                    x = x0.clone().requires_grad_()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                        out = module(x)
                    out.backward(torch.ones_like(out))

                for module in variants.values():
                    run(module)
                for repeat in range(args.repeats):
                    order = list(variants.items()) if repeat % 2 == 0 else list(variants.items())[::-1]
                    for label, module in order:
                        start = clock()
                        for _ in range(args.calls):
                            run(module)
                        totals[label][repeat] += 2 * 1e3 * (clock() - start) / args.calls  # two slots per shape
            ratio = [a / b for a, b in zip(totals["after"], totals["before"], strict=True)]

            def cell(values: list[float], fmt: str = ".1f") -> str:
                return (f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-"
                        f"{format(max(values), fmt)})")

            print(f"| {name} | {precision} | {statistics.median(totals['identity']):.1f} | {cell(totals['before'])} | "
                  f"{cell(totals['after'])} | {cell(ratio, '.2f')} |", flush=True)


if __name__ == "__main__":
    main()
