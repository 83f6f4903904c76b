"""``visattn profile``: parameters, MACs, latency and the training-speed ruler of a model."""

from __future__ import annotations

from collections.abc import Sequence

from visattn.cli.main import new_parser
from visattn.config import TASKS, parse_value
from visattn.errors import ConfigError

PROFILE_EXAMPLES = """\
examples:
  {prog} --backbone resnet50 --attn se --img-size 224
  {prog} --backbone resnet18 --attn cbam --img-size 64 --backbone-args '{{base_width: 32}}'   # half width
  {prog} --task detect --backbone csp_n --attn eca --img-size 160 --num-classes 3
  {prog} --run runs/<dir>                                  # the model of a trained run, at its size

MACs are multiply-accumulates; FLOPs = 2 x MACs. Latency is the median of --repeats forward passes.
"""
# (img_size, num_classes) of a model given by flags: ImageNet's classifier, COCO's detector at the detection default
FLAG_DEFAULTS = {"classify": (224, 1000), "detect": (160, 80)}


def main(argv: Sequence[str] | None = None, *, prog: str = "visattn profile") -> int:
    parser = new_parser(prog, "Profile a model: parameters, MACs (FLOPs = 2 x MACs), what each attention block "
                              "adds, and latency.", PROFILE_EXAMPLES)
    parser.add_argument("--run", metavar="RUN_DIR", help="profile a trained run's model (its config and size); "
                                                         "the model flags below are then not used")
    parser.add_argument("--task", choices=TASKS, default="classify", help="(default: classify)")
    parser.add_argument("--backbone", default="resnet50", help="a registered backbone (default: resnet50)")
    parser.add_argument("--attn", default=None, help="attention block for the default slots (default: none)")
    parser.add_argument("--backbone-args", type=parse_value, metavar="YAML", default=None,
                        help="backbone options, e.g. '{base_width: 32}' (default: none)")
    parser.add_argument("--neck", default="pan", help="detect: neck (default: pan)")
    parser.add_argument("--scale", default="n", help="detect: neck/head scale (default: n)")
    parser.add_argument("--img-size", type=int, help="(default: the run's; else 224 classify, 160 detect)")
    parser.add_argument("--batch-size", type=int, default=1, help="(default: 1)")
    parser.add_argument("--num-classes", type=int, help="(default: 1000 classify, 80 detect)")
    parser.add_argument("--in-chans", type=int, default=3, help="(default: 3)")
    parser.add_argument("--device", default="cpu", help="(default: cpu)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed forward passes (default: 3)")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes, median reported (default: 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--train-steps", type=int, default=3,
                        help="timed training steps for the ruler: img/s, GFLOP/s, share of the matmul peak "
                             "(0: skip; default: 3)")
    parser.add_argument("--train-batch-size", type=int, default=16, help="batch of the training steps (default: 16)")
    parser.add_argument("--precision", default="32", help="precision of the training steps: 32 | bf16-mixed | auto "
                                                          "(default: 32)")
    parser.add_argument("--remeasure-peak", action="store_true",
                        help="measure this machine's matmul peak again and replace the cached value (do it on a "
                             "quiet machine: every later run on this hardware is divided by it)")
    args = parser.parse_args(argv)
    if args.backbone_args is not None and not isinstance(args.backbone_args, dict):
        raise ConfigError(f"--backbone-args must be a YAML mapping such as '{{base_width: 32}}', "
                          f"got {args.backbone_args!r}")
    for flag in ("batch_size", "repeats", "img_size", "num_classes", "in_chans"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    # the model code after the flags: --help imports no torch
    import copy

    import torch

    from visattn.complexity import count, measure_latency
    from visattn.export import load_run
    from visattn.models.spec import ModelSpec
    from visattn.perf import matmul_peak, precision_dtype, profile_training, resolve_precision, training_report

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.run is not None:
        model, spec = load_run(args.run)
        label = f"{args.run} ({spec.backbone} + {spec.attn or 'no attention'})"
        img_size = args.img_size or spec.img_size
    else:
        default_size, default_classes = FLAG_DEFAULTS[args.task]
        img_size = args.img_size or default_size
        spec = ModelSpec.from_config({"task": args.task, "backbone": args.backbone, "attn": args.attn,
                                      "img_size": img_size, "backbone_args": args.backbone_args or {},
                                      "neck": args.neck, "scale": args.scale},
                                     num_classes=args.num_classes or default_classes, in_chans=args.in_chans)
        model = spec.build()
        label = " + ".join([spec.backbone, *([f"{spec.neck}-{spec.scale}"] if spec.neck else []),
                            spec.attn or "no attention"]) + (" (detector)" if spec.neck else "")
    in_chans = getattr(model, "in_chans", spec.in_chans)  # a detector takes RGB whatever --in-chans says
    model = model.eval().to(args.device)
    size = (args.batch_size, in_chans, img_size, img_size)
    result = count(model, input_size=size)
    print(f"{label} @ {size}: {result.params:,} params, {result.macs / 1e9:.3f} GMACs "
          f"({result.flops / 1e9:.3f} GFLOPs)")
    print(result.table())
    latency = measure_latency(model, input_size=size, warmup=args.warmup, repeats=args.repeats)
    print(f"latency on {args.device} ({torch.get_num_threads()} threads): "
          f"median {latency['median_ms']:.2f} ms, min {latency['min_ms']:.2f} ms "
          f"over {args.repeats} runs (batch {args.batch_size})")
    if args.train_steps > 0:
        precision, _ = resolve_precision(args.precision, accelerator=torch.device(args.device).type)
        if args.remeasure_peak:
            dtype = precision_dtype(precision)
            peak = matmul_peak("fp32" if dtype == "fp16" and args.device == "cpu" else dtype, device=args.device,
                               refresh=True)
            print(f"matmul peak re-measured and stored: {peak['flops'] / 1e9:.0f} GFLOP/s ({peak['dtype']}, "
                  f"{torch.get_num_threads()} thread(s))")
        ruler = profile_training(copy.deepcopy(model), input_size=(args.train_batch_size, *size[1:]),
                                 precision=precision, steps=args.train_steps, device=args.device)
        print(training_report(ruler))
    return 0
