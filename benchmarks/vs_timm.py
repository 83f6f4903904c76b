"""Time visattn models against timm's same architectures, side by side in one process (CPU).

For each row, visattn and timm alternate repetition by repetition (so background load hits both alike);
the table reports medians and the visattn/timm ratio. Forward runs under ``torch.no_grad`` in eval mode;
forward+backward in train mode.

    .venv/bin/python benchmarks/vs_timm.py [--batches 1 32] [--repeats 5] [--channels-last]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch
from torch import nn

import visattn

ROWS: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module]]] = {
    "ResNet-50": (lambda: visattn.build_model("resnet50"), lambda: timm.create_model("resnet50")),
    "ResNet-50 + se": (lambda: visattn.build_model("resnet50", attn="se"), lambda: timm.create_model("seresnet50")),
    "ResNet-50 + cbam": (lambda: visattn.build_model("resnet50", attn="cbam"),
                         lambda: timm.create_model("resnet50", block_args={"attn_layer": "cbam"})),
    "ViT-S/16": (lambda: visattn.build_model("vit_small"), lambda: timm.create_model("vit_small_patch16_224")),
    "Swin-T": (lambda: visattn.build_model("swin_t"), lambda: timm.create_model("swin_tiny_patch4_window7_224")),
}


def step(model: nn.Module, x: torch.Tensor, backward: bool) -> float:
    start = time.perf_counter()
    if backward:
        model(x).sum().backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad():
            model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args()
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.get_num_threads()} threads, "
          f"{args.img_size}x{args.img_size}, median of {args.repeats}, channels_last={args.channels_last}\n")
    print("| model | batch | pass | visattn ms | timm ms | visattn/timm |")
    print("|---|---:|---|---:|---:|---:|")
    for row in args.rows:
        build_ours, build_ref = ROWS[row]
        ours, ref = build_ours().to(memory_format=fmt), build_ref().to(memory_format=fmt)
        for batch in args.batches:
            x = torch.randn(batch, 3, args.img_size, args.img_size).to(memory_format=fmt)
            for backward in (False, True):
                ours.train(backward)
                ref.train(backward)
                step(ours, x, backward)  # warm-up
                step(ref, x, backward)
                times: dict[str, list[float]] = {"ours": [], "ref": []}
                for _ in range(args.repeats):
                    times["ours"].append(step(ours, x, backward))
                    times["ref"].append(step(ref, x, backward))
                mine, theirs = (statistics.median(times[k]) * 1e3 for k in ("ours", "ref"))
                print(f"| {row} | {batch} | {'fwd+bwd' if backward else 'fwd'} | {mine:.1f} | {theirs:.1f} "
                      f"| {mine / theirs:.3f} |", flush=True)


if __name__ == "__main__":
    main()
