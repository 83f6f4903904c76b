"""The ``visattn`` command (``python -m visattn`` is the same): one program, a subcommand per job.

``tools/*.py`` are thin aliases of these subcommands, so a checkout works without installing. Every
subcommand turns a user error into one paragraph and exit status 2 (``run_cli``), takes ``--version``,
and ends its ``--help`` with examples.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from visattn.cli import run_cli

Main = Callable[..., "int | None"]


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"visattn {version('visattn')}"
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        from visattn import __version__

        return f"visattn {__version__}"


def new_parser(prog: str, description: str, epilog: str = "") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog.format(prog=prog),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=version_text())
    return parser


# ------------------------------------------------------------------------------------------------------- export
EXPORT_EXAMPLES = """\
examples:
  {prog} --run runs/digits-resnet18-cbam-s0                       # onnx, torchscript, safetensors
  {prog} --run runs/digits-resnet18-cbam-s0 --format onnx --dynamic-batch
  {prog} --run runs/shapes-csp_n-eca-s0 --half                    # float16 (tolerance 5e-2)

Each file is checked against the eager model (real test images and random input) before it replaces
<run>/export/; report.json holds the numbers.
"""


def export_main(argv: Sequence[str] | None = None, *, prog: str = "tools/export.py") -> int:
    from visattn.export import DEFAULT_OPSET, FORMATS, export_run

    parser = new_parser(prog, "Export a trained run to ONNX, TorchScript and safetensors, each verified.",
                        EXPORT_EXAMPLES)
    parser.add_argument("--run", required=True, help="a run directory made by visattn train")
    parser.add_argument("--checkpoint", default="best", help="best | last | PATH (default: best)")
    parser.add_argument("--format", default=",".join(FORMATS),
                        help=f"comma-separated: {', '.join(FORMATS)} (default: all)")
    parser.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch dimension")
    parser.add_argument("--img-size", type=int, help="input size of the export (default: the run's)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    parser.add_argument("--half", action="store_true", help="float16 weights and inputs (tolerance 5e-2)")
    args = parser.parse_args(argv)
    report = export_run(args.run, checkpoint=args.checkpoint, formats=args.format, dynamic_batch=args.dynamic_batch,
                        img_size=args.img_size, opset=args.opset, half=args.half)
    for fmt, result in report["formats"].items():
        worst = max(c["max_abs_diff"] for c in result["checks"])
        if "box_agreement" in result["checks"][0]:
            agree = f"box agreement {min(c['box_agreement'] for c in result['checks']):.0%}"
            boxes = sum(c["detections"] for c in result["checks"])
            agree += f" ({boxes} boxes)  NMS {report['nms'][fmt].split(':')[0]}"
        else:
            agree = f"top-1 agreement {min(c['top1_agreement'] for c in result['checks']):.0%}"
        print(f"{fmt:<12} {result['file']:<22} {result['bytes'] / 1e6:8.2f} MB  max |diff| {worst:.2e}  {agree}  ok")
    print(f"verified on {'real images and ' if report['real_images'] else ''}random input; "
          f"report: {report['run']}/export/report.json")
    print(json.dumps({"tolerance": report["tolerance"], "dynamic_batch": report["dynamic_batch"]}))
    return 0


# ------------------------------------------------------------------------------------------------------ predict
PREDICT_EXAMPLES = """\
examples:
  {prog} --model runs/digits-resnet18-cbam-s0/export/model.onnx --images my_images/ --out preds.csv
  {prog} --model runs/shapes-csp_n-eca-s0/export --images photos/ --conf 0.1

Classification prints class and probability per image; detection prints one line per box and saves each
image with its boxes drawn to --save-dir (default: runs/<dir>/predictions, beside export/). Images go
through the run's own eval transform (the one validation used), rebuilt from model.json.
"""


def predict_main(argv: Sequence[str] | None = None, *, prog: str = "tools/predict.py") -> int:
    from visattn.predict import predict_folder, read_spec

    parser = new_parser(prog, "Predict with an exported model (ONNX through onnxruntime, or an export folder).",
                        PREDICT_EXAMPLES)
    parser.add_argument("--model", required=True, help="model.onnx, or an export folder (model.safetensors)")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", help="CSV file for the predictions (default: print only)")
    parser.add_argument("--save-dir", help="detection: folder for the images with boxes drawn")
    parser.add_argument("--conf", type=float, help="detection: minimum box score (default: the export's, 0.25)")
    parser.add_argument("--batch-size", type=int, default=16, help="(default: 16)")
    args = parser.parse_args(argv)
    model = Path(args.model)
    detect = read_spec(model).get("task") == "detect"
    save_dir = args.save_dir
    if detect and save_dir is None:  # beside export/, which a new export replaces whole
        folder = model if model.is_dir() else model.parent
        save_dir = (folder.parent if folder.name == "export" else folder) / "predictions"
    rows = predict_folder(model, args.images, batch_size=args.batch_size, out_csv=args.out, save_dir=save_dir,
                          conf_threshold=args.conf)
    for row in rows:
        if detect:
            print(f"{row['image']}\t{row['class']}\t{row['score']:.3f}\t"
                  f"{row['x0']:.1f} {row['y0']:.1f} {row['x1']:.1f} {row['y1']:.1f}")
        else:
            print(f"{row['image']}\t{row['class']}\t{row['probability']:.3f}")
    if detect:
        print(f"{len(rows)} boxes; images with boxes drawn in {save_dir}")
    return 0


# ---------------------------------------------------------------------------------------------------- visualize
VISUALIZE_EXAMPLES = """\
examples:
  {prog} --run runs/<dir> --n 8                       # index.png + image_XX.png in runs/<dir>/figures/best
  {prog} --run runs/<dir> --images my_images/ --slot 'layer3.*'
  {prog} --run runs/<dir> --measure 200 [--untrained]  # attention mass inside the object boxes

Writes index.png (one row per image) and image_XX.png (every map of one image) to --out. --measure N
prints instead the share of each spatial map's mass inside the object boxes over N images (data sets
that record boxes, e.g. cluttered-digits).
"""


def visualize_main(argv: Sequence[str] | None = None, *, prog: str = "tools/visualize.py") -> int:
    from visattn.viz.run import measure_run, visualize_run

    parser = new_parser(prog, "Attention figures of a trained run.", VISUALIZE_EXAMPLES)
    parser.add_argument("--run", required=True, help="run directory (config.yaml + checkpoints/)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", help="folder of images (default: the run's own data set)")
    source.add_argument("--data", help="another data set at the run's image size (default: the run's)")
    parser.add_argument("--split", default="test", help="train | val | test (default: test)")
    parser.add_argument("--n", type=int, default=8, help="images to draw (default: 8)")
    parser.add_argument("--slot", help="glob over captured keys, e.g. 'layer3.*' or 'input' (default: all)")
    parser.add_argument("--out", help="output folder (default: <run>/figures/<checkpoint>)")
    parser.add_argument("--checkpoint", default="best", help="best | last | a .ckpt path (default: best)")
    parser.add_argument("--untrained", action="store_true", help="the same architecture, freshly initialised")
    parser.add_argument("--measure", type=int, metavar="N", help="print attention mass inside boxes over N images")
    parser.add_argument("--no-gradcam", action="store_true", help="--measure without the Grad-CAM reference")
    args = parser.parse_args(argv)
    if args.measure is not None:
        if args.images:
            raise ValueError("--measure needs images with boxes from a data set; it cannot use --images")
        report = measure_run(args.run, data=args.data, split=args.split, n=args.measure, pattern=args.slot,
                             checkpoint=args.checkpoint, untrained=args.untrained, with_gradcam=not args.no_gradcam)
        width = max(len(k) for k in report)
        model = "untrained" if args.untrained else args.checkpoint
        print(f"share of attention mass inside the box ({args.split}, {args.measure} images, {model} model)")
        for key in sorted(report, key=lambda k: (k == "box_area", k.startswith("stage:"), k)):
            note = "  (uniform map)" if key == "box_area" else ""
            print(f"{key:<{width}}  {report[key]:.3f}{note}")
        return 0
    paths = visualize_run(args.run, images_dir=args.images, data=args.data, split=args.split, n=args.n,
                          pattern=args.slot, out=args.out, checkpoint=args.checkpoint, untrained=args.untrained)
    print(f"wrote {len(paths)} figures to {paths[0].parent} (summary: {paths[0].name})")
    return 0


# ------------------------------------------------------------------------------------------------------ profile
PROFILE_EXAMPLES = """\
examples:
  {prog} --backbone resnet50 --attn se --img-size 224
  {prog} --backbone resnet18 --attn cbam --img-size 64 --backbone-args '{{base_width: 32}}'   # half width
  {prog} --task detect --backbone csp_n --attn eca --img-size 160 --num-classes 3
  {prog} --run runs/<dir>                                  # the model of a trained run, at its size

MACs are multiply-accumulates; FLOPs = 2 x MACs. Latency is the median of --repeats forward passes.
"""


def profile_main(argv: Sequence[str] | None = None, *, prog: str = "tools/profile_model.py") -> int:
    import torch

    from visattn.cli import parse_value
    from visattn.complexity import count, measure_latency

    parser = new_parser(prog, "Profile a model: parameters, MACs (FLOPs = 2 x MACs), what each attention block "
                              "adds, and latency.", PROFILE_EXAMPLES)
    parser.add_argument("--run", metavar="RUN_DIR", help="profile a trained run's model (its config and size); "
                                                         "the model flags below are then not used")
    parser.add_argument("--task", choices=["classify", "detect"], default="classify", help="(default: classify)")
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
        raise ValueError(f"--backbone-args must be a YAML mapping such as '{{base_width: 32}}', "
                         f"got {args.backbone_args!r}")
    for flag in ("batch_size", "repeats", "img_size", "num_classes", "in_chans"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.run is not None:
        from visattn.export import load_run

        model, spec = load_run(args.run)
        label = f"{args.run} ({spec.backbone} + {spec.attn or 'no attention'})"
        img_size, in_chans = args.img_size or spec.img_size, spec.in_chans
    elif args.task == "detect":
        from visattn.models.detector import build_detector

        img_size, in_chans = args.img_size or 160, 3
        model = build_detector(args.backbone, attn=args.attn, num_classes=args.num_classes or 80, neck=args.neck,
                               scale=args.scale, img_size=img_size, backbone_args=args.backbone_args or {})
        label = f"{args.backbone} + {args.neck}-{args.scale} + {args.attn or 'no attention'} (detector)"
    else:
        from visattn import build_model  # imported late: the builder pulls in every backbone

        img_size, in_chans = args.img_size or 224, args.in_chans
        model = build_model(args.backbone, attn=args.attn, num_classes=args.num_classes or 1000, in_chans=in_chans,
                            img_size=img_size, backbone_args=args.backbone_args or {})
        label = f"{args.backbone} + {args.attn or 'no attention'}"
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
        import copy

        from visattn.perf import matmul_peak, precision_dtype, profile_training, resolve_precision, training_report

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


# ------------------------------------------------------------------------------------------------------- blocks
def blocks_main(argv: Sequence[str] | None = None, *, prog: str = "tools/blocks.py") -> int:
    import torch

    import visattn

    parser = new_parser(prog, "Print every registered attention block: parameters at a channel count and the "
                              "output shape.", "example:\n  {prog} --channels 64 --size 8\n")
    parser.add_argument("--channels", type=int, default=256, help="(default: 256)")
    parser.add_argument("--size", type=int, default=14, help="feature-map height and width (default: 14)")
    args = parser.parse_args(argv)
    if args.channels < 1 or args.size < 1:
        raise ValueError(f"--channels and --size must be >= 1, got {args.channels} and {args.size}")
    x = torch.randn(2, args.channels, args.size, args.size)
    print(f"{'block':<14} {'params':>10}  output shape (input {tuple(x.shape)})")
    for name in visattn.list_attention():
        block = visattn.build_attention(name, args.channels).eval()
        with torch.no_grad():
            shape = tuple(block(x).shape)
        print(f"{name:<14} {sum(p.numel() for p in block.parameters()):>10,}  {shape}")
    return 0


# ----------------------------------------------------------------------------------------------------- evaluate
EVALUATE_EXAMPLES = """\
examples:
  {prog} --run runs/digits-resnet18-cbam-s0                       # best.ckpt on its own test split
  {prog} --run runs/digits-resnet18-cbam-s0 --checkpoint last --split val
  {prog} --run runs/<dir> --export runs/<dir>/export               # the exported weights instead
  {prog} --run runs/<dir> --data imagefolder --data-dir ~/other_pets

Writes <run>/eval-<data>-<split>.json: the metrics training reports, plus the confusion matrix
(classification; and confusion-<data>-<split>.png with matplotlib) or per-class AP (detection).
"""


def evaluate_main(argv: Sequence[str] | None = None, *, prog: str = "tools/evaluate.py") -> int:
    from visattn.evaluate import evaluate_run

    parser = new_parser(prog, "Evaluate a run's weights (or an export folder) on a data set split.",
                        EVALUATE_EXAMPLES)
    parser.add_argument("--run", required=True, help="run directory (config.yaml + checkpoints/)")
    parser.add_argument("--checkpoint", default="best", help="best | last | a .ckpt path (default: best)")
    parser.add_argument("--export", metavar="DIR", help="an export folder (model.json + model.safetensors) to "
                                                        "evaluate instead of a checkpoint")
    parser.add_argument("--data", help="data set (default: the run's)")
    parser.add_argument("--data-dir", help="its folder (default: the run's, when --data is the run's)")
    parser.add_argument("--split", default="test", choices=["test", "val"], help="(default: test)")
    parser.add_argument("--batch-size", type=int, help="(default: the run's)")
    parser.add_argument("--limit", type=int, help="only the first N images (default: the run's limit)")
    parser.add_argument("--num-workers", type=int, default=0, help="data loader workers (default: 0)")
    args = parser.parse_args(argv)
    result = evaluate_run(args.run, checkpoint=args.checkpoint, export=args.export, data=args.data,
                          data_dir=args.data_dir, split=args.split, batch_size=args.batch_size, limit=args.limit,
                          num_workers=args.num_workers)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result["metrics"].items())
    print(f"{result['data']} {result['split']} ({result['images']} images, {result['weights']}): {metrics}")
    print(f"wrote {result['path']}" + (f" and {result['figure']}" if result.get("figure") else ""))
    return 0


# ------------------------------------------------------------------------------------------------- the program
def sweep_command(argv: Sequence[str] | None = None, *, prog: str = "tools/sweep.py") -> int:
    from visattn.sweep.cli import sweep_main

    return sweep_main(argv, prog=prog)


def train_command(argv: Sequence[str] | None = None, *, prog: str = "tools/train.py") -> int:
    from visattn.cli import train_main

    return train_main(argv, prog=prog)


COMMANDS: dict[str, tuple[Main, str]] = {
    "train": (train_command, "train one run (classification or detection)"),
    "sweep": (sweep_command, "ablation sweep: backbones x blocks x seeds, with tables and plots"),
    "evaluate": (evaluate_main, "metrics of a run's weights on a data set split"),
    "export": (export_main, "ONNX / TorchScript / safetensors, each verified against the eager model"),
    "predict": (predict_main, "predict a folder of images with an exported model"),
    "visualize": (visualize_main, "attention figures of a run; attention mass inside object boxes"),
    "profile": (profile_main, "parameters, MACs and latency of a model"),
    "blocks": (blocks_main, "every attention block: parameters and output shape"),
}

USAGE = """\
usage: visattn <command> [flags]        (visattn <command> --help for its flags)

Plug-in attention blocks for vision backbones: train, ablate, evaluate, export.

commands:
{commands}

examples:
  visattn train --config digits_resnet18_cbam
  visattn train --backbone resnet50 --attn se --data imagefolder --data-dir ~/pets
  visattn evaluate --run runs/digits-resnet18-cbam-s0
  visattn export --run runs/digits-resnet18-cbam-s0 --format onnx
"""


def usage() -> str:
    return USAGE.format(commands="\n".join(f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()))


def main(argv: Sequence[str] | None = None) -> None:
    """``visattn <command> [flags]``: dispatch to the command, which parses its own flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), end="")
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(version_text())
        sys.exit(0)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        from visattn.registry import did_you_mean

        print(f"visattn: error: unknown command {name!r}.{did_you_mean(name, list(COMMANDS))} "
              f"Commands: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    command = COMMANDS[name][0]
    run_cli(lambda: command(rest, prog=f"visattn {name}"))
