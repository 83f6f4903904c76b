"""ECA under bf16 autocast: its k-tap filter as a oneDNN conv1d call vs as k shifted products, alternating.

Forward + backward of the ECA block alone on a bf16 activation of each slot shape the flagship's half-width
ResNet-18 gives it (two slots each, as in ``block_cost.py``), one thread, CPU clock; per-step sums over the 8 slots.
"conv1d" is the block as it is; "shifted" has its ``conv`` replaced by ``shifted_products`` below (the same
weights and zero padding; the same float32 logits up to float32 rounding). Measured and not adopted (benchmarks/
README.md, attention tax): the profiler's ~6 ms per step for ECA's conv1d did not come back as a saving.

    .venv/bin/python benchmarks/eca_conv1d.py --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import visattn

SLOTS = [(64, 32, 16, 16), (64, 64, 8, 8), (64, 128, 4, 4), (64, 256, 2, 2)]  # each twice in ResNet-18


def shifted_products(weight: torch.Tensor, squeezed: torch.Tensor) -> torch.Tensor:
    """A bias-free, zero-padded ``conv1d`` of a (B, 1, C) vector with a (1, 1, k) kernel as k shifted products."""
    channels, taps = squeezed.shape[-1], weight.shape[-1]
    padded = torch.nn.functional.pad(squeezed, ((taps - 1) // 2, (taps - 1) // 2))  # (B, 1, C + k - 1)
    flat = weight.view(-1)
    out = flat[0] * padded[..., :channels]
    for tap in range(1, taps):
        out = out + flat[tap] * padded[..., tap:tap + channels]
    return out  # (B, 1, C)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--calls", type=int, default=3, help="forward + backward calls per timing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    totals = {"conv1d": [0.0] * args.repeats, "shifted": [0.0] * args.repeats}
    for shape in SLOTS:
        conv = visattn.build_attention("eca", shape[1])
        shifted = visattn.build_attention("eca", shape[1])
        shifted.load_state_dict(conv.state_dict())
        shifted.conv.forward = lambda v, w=shifted.conv.weight: shifted_products(w, v)
        x0 = torch.randn(*shape).bfloat16()
        variants = {"shifted": shifted, "conv1d": conv}

        def run(module: torch.nn.Module, x0: torch.Tensor = x0) -> None:
            for _ in range(args.calls):
                x = x0.clone().requires_grad_(True)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = module(x)
                out.float().sum().backward()

        for module in variants.values():
            run(module)  # warm-up
        for repeat in range(args.repeats):
            order = list(variants.items()) if repeat % 2 == 0 else list(variants.items())[::-1]
            for name, module in order:
                start = time.thread_time()
                run(module)
                totals[name][repeat] += 2 * 1000 * (time.thread_time() - start) / args.calls  # two slots per shape
    ratio = [s / c for s, c in zip(totals["shifted"], totals["conv1d"], strict=True)]
    for name, values in totals.items():
        print(f"{name:<8} ms/step median {statistics.median(values):.2f} (min {min(values):.2f}, "
              f"max {max(values):.2f})")
    print(f"shifted / conv1d: median {statistics.median(ratio):.2f} (min {min(ratio):.2f}, max {max(ratio):.2f}) over "
          f"{args.repeats} alternating repeats")


if __name__ == "__main__":
    main()
