"""``visattn visualize``: attention figures of a run, attention mass inside object boxes (``visattn.visualize``)."""

from __future__ import annotations

from collections.abc import Sequence

from visattn.cli.main import new_parser
from visattn.errors import ConfigError
from visattn.extras import require

VISUALIZE_EXAMPLES = """\
examples:
  {prog} --run runs/<dir> --n 8                       # index.png + image_XX.png in runs/<dir>/figures/best
  {prog} --run runs/<dir> --images my_images/ --slot 'layer3.*'
  {prog} --run runs/<dir> --measure 200 [--untrained]  # attention mass inside the object boxes

Writes index.png (one row per image) and image_XX.png (every map of one image) to --out. --measure N
prints instead the share of each spatial map's mass inside the object boxes over N images (data sets
that record boxes, e.g. cluttered-digits).
"""


def main(argv: Sequence[str] | None = None, *, prog: str = "visattn visualize") -> int:
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
    if args.measure is not None and args.images:
        raise ConfigError("--measure needs images with boxes from a data set; it cannot use --images")
    # the figure code imports matplotlib (the [viz] extra): a missing one is one paragraph, not a traceback
    require("matplotlib", purpose="visattn visualize --measure" if args.measure is not None else
            "visattn visualize (attention figures)")
    from visattn.visualize import measure_run, visualize_run  # after the flags: --help imports no torch

    if args.measure is not None:
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
