"""Profile a model: parameters, MACs (FLOPs = 2 x MACs), what each attention block adds, and latency.

(Not named ``profile.py``: a script there would shadow the stdlib ``profile`` module that torch imports.)

Example: python tools/profile_model.py --backbone resnet50 --attn se --img-size 224 --batch-size 1
"""

from __future__ import annotations

import argparse

import torch

from visattn.complexity import count, measure_latency


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet50", help="a registered backbone, e.g. resnet50")
    parser.add_argument("--attn", default=None,
                        help="attention block for the default slots (default: bare backbone)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forward passes")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from visattn import build_model  # imported late: the builder pulls in every backbone

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = build_model(args.backbone, attn=args.attn, num_classes=args.num_classes, in_chans=args.in_chans,
                        img_size=args.img_size).to(args.device)
    size = (args.batch_size, args.in_chans, args.img_size, args.img_size)
    result = count(model, input_size=size)
    attn = args.attn or "no attention"
    print(f"{args.backbone} + {attn} @ {size}: {result.params:,} params, {result.macs / 1e9:.3f} GMACs "
          f"({result.flops / 1e9:.3f} GFLOPs)")
    print(result.table())
    latency = measure_latency(model, input_size=size, warmup=args.warmup, repeats=args.repeats)
    print(f"latency on {args.device} ({torch.get_num_threads()} threads): "
          f"median {latency['median_ms']:.2f} ms, min {latency['min_ms']:.2f} ms "
          f"over {args.repeats} runs (batch {args.batch_size})")


if __name__ == "__main__":
    main()
