"""Training-step time of one model under variants (fp32, bf16 autocast, channels_last, torch.compile), alternating.

Each repeat times every variant in turn (``--steps`` steps each, after warm-up), so background load on a shared
machine hits all of them alike; the table reports each variant's median step time, its ratio to fp32 (median of the
per-repeat ratios, with min-max spread) and the achieved GFLOP/s and its share of the cached matmul peak of the
variant's dtype (see visattn.perf). A step is forward + loss + backward + AdamW, as in training.

    .venv/bin/python benchmarks/train_step.py --models resnet18:none resnet18:se --variants fp32 bf16
    .venv/bin/python benchmarks/train_step.py --models csp_n:none --img-size 160 --batch-size 16   # detector

``csp_*`` names build a detector (``visattn.models.build_detector``, loss = sum of raw outputs); others a classifier.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from visattn.complexity import count
from visattn.perf import achieved_flops, cpu_model, matmul_peak, mfu

VARIANTS = ("fp32", "bf16", "channels_last", "compile", "bf16_channels_last")


def build(name: str, attn: str | None, img_size: int, num_classes: int) -> tuple[nn.Module, Callable]:
    """A model and its loss function ``loss(model, x, y)``."""
    if name.startswith("csp"):
        from visattn.models.detector import build_detector

        model = build_detector(name, attn=attn, num_classes=num_classes, img_size=img_size)

        def det_loss(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = m.forward_raw(x) if hasattr(m, "forward_raw") else m(x)
            parts = out if isinstance(out, (list, tuple)) else [out]
            return sum(p.float().mean() for p in parts)

        return model, det_loss
    from visattn import build_model

    model = build_model(name, attn=attn, num_classes=num_classes, img_size=img_size)
    return model, lambda m, x, y: F.cross_entropy(m(x).float(), y)


def make_step(name: str, attn: str | None, variant: str, args: argparse.Namespace, x: torch.Tensor,
              y: torch.Tensor) -> tuple[Callable[[], None], int]:
    torch.manual_seed(0)
    model, loss_fn = build(name, attn, args.img_size, args.num_classes)
    macs = count(model, input_size=(1, *x.shape[1:])).macs
    model.train()
    inputs = x
    if "channels_last" in variant:
        model = model.to(memory_format=torch.channels_last)
        inputs = x.contiguous(memory_format=torch.channels_last)
    runner: nn.Module = torch.compile(model) if variant == "compile" else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if "bf16" in variant else contextlib.nullcontext

    def step() -> None:
        with autocast():
            loss = loss_fn(runner, inputs, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18:none"], help="backbone:attn pairs")
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16"], choices=VARIANTS)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant per repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"img {args.img_size}, batch {args.batch_size}, {args.steps} steps x {args.repeats} repeats")
    peaks = {d: matmul_peak(d)["flops"] for d in ("fp32", "bf16") if any(d in v or (d == "fp32" and "bf16" not in v)
                                                                         for v in args.variants)}
    print("matmul peak (cached): " + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items()))
    header = "| model | variant | step ms (median, min-max) | ratio to first (median, min-max) | GFLOP/s | of mm peak |"
    print(header + "\n|---|---|---|---|---|---|")
    for spec in args.models:
        name, _, attn = spec.partition(":")
        attn = None if attn in ("", "none") else attn
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
        y = torch.randint(0, args.num_classes, (args.batch_size,))
        steps, macs = {}, 0
        for variant in args.variants:
            steps[variant], macs = make_step(name, attn, variant, args, x, y)
            for _ in range(args.warmup):
                steps[variant]()
        times: dict[str, list[float]] = {v: [] for v in args.variants}
        for _ in range(args.repeats):
            for variant in args.variants:
                start = time.perf_counter()
                for _ in range(args.steps):
                    steps[variant]()
                times[variant].append((time.perf_counter() - start) / args.steps)
        base = args.variants[0]
        for variant in args.variants:
            med = statistics.median(times[variant])
            ratios = [b / t for b, t in zip(times[base], times[variant], strict=True)]  # >1: faster than base
            flops = achieved_flops(images=args.batch_size, seconds=med, macs_per_image=macs)
            dtype = "bf16" if "bf16" in variant else "fp32"
            share = mfu(flops, peaks.get(dtype))
            print(f"| {spec} | {variant} | {1e3 * med:.1f} ({1e3 * min(times[variant]):.1f}-"
                  f"{1e3 * max(times[variant]):.1f}) | {statistics.median(ratios):.2f}x ({min(ratios):.2f}-"
                  f"{max(ratios):.2f}) | {flops / 1e9:.0f} | {100 * (share or 0):.0f}% |", flush=True)


if __name__ == "__main__":
    main()
