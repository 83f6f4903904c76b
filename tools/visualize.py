"""Attention figures of a trained run: ``python tools/visualize.py --run runs/<dir> [--images DIR | --data NAME]``.

Writes ``index.png`` (one row per image) and ``image_XX.png`` (every map of one image) to --out
(default ``<run>/figures/<checkpoint>``). ``--measure N`` prints instead the share of each spatial map's
mass inside the object boxes over N images (data sets that record boxes, e.g. cluttered-digits).
"""

from __future__ import annotations

import argparse

from visattn.cli import run_cli
from visattn.viz.run import measure_run, visualize_run


def main() -> int:
    parser = argparse.ArgumentParser(prog="tools/visualize.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory (config.yaml + checkpoints/)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--images", help="folder of images (default: the run's own data set)")
    source.add_argument("--data", help="another data set at the run's image size (default: the run's)")
    parser.add_argument("--split", default="test", help="train | val | test (with --data or the run's data)")
    parser.add_argument("--n", type=int, default=8, help="images to draw")
    parser.add_argument("--slot", help="glob over captured keys, e.g. 'layer3.*' or 'input'")
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--checkpoint", default="best", help="best | last | a .ckpt path")
    parser.add_argument("--untrained", action="store_true", help="the same architecture, freshly initialised")
    parser.add_argument("--measure", type=int, metavar="N", help="print attention mass inside boxes over N images")
    parser.add_argument("--no-gradcam", action="store_true", help="--measure without the Grad-CAM reference")
    args = parser.parse_args()
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


if __name__ == "__main__":
    run_cli(main)
