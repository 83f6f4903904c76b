"""``visattn evaluate``: a run's weights on a data set split (``visattn.evaluate``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from visattn.cli.main import new_parser

EVALUATE_EXAMPLES = """\
examples:
  {prog} --run runs/digits-resnet18-cbam-s0                       # best.ckpt on its own test split
  {prog} --run runs/digits-resnet18-cbam-s0 --checkpoint last --split val
  {prog} --run runs/<dir> --export runs/<dir>/export               # the exported weights instead
  {prog} --run runs/<dir> --data imagefolder --data-dir ~/other_pets

Writes <run>/eval-<data>-<split>.json: the metrics training reports, plus the confusion matrix
(classification; and confusion-<data>-<split>.png with matplotlib) or per-class AP (detection).
"""


def main(argv: Sequence[str] | None = None, *, prog: str = "visattn evaluate") -> int:
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
    from visattn.evaluate import evaluate_run  # after the flags: --help imports no torch

    result = evaluate_run(args.run, checkpoint=args.checkpoint, export=args.export, data=args.data,
                          data_dir=args.data_dir, split=args.split, batch_size=args.batch_size, limit=args.limit,
                          num_workers=args.num_workers)
    metrics = ", ".join(f"{k}={v:.4f}" for k, v in result["metrics"].items())
    print(f"{result['data']} {result['split']} ({result['images']} images, {result['weights']}): {metrics}")
    print(f"wrote {result['path']}" + (f" and {result['figure']}" if result.get("figure") else ""))
    if result.get("figure_skipped"):
        print(f"visattn: no confusion-matrix PNG: {result['figure_skipped']}", file=sys.stderr)
    return 0
