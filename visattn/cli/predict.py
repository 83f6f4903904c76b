"""``visattn predict``: a folder of images through an exported model (``visattn.predict``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from visattn.cli.main import new_parser

PREDICT_EXAMPLES = """\
examples:
  {prog} --model runs/digits-resnet18-cbam-s0/export/model.onnx --images my_images/ --out preds.csv
  {prog} --model runs/shapes-csp_n-eca-s0/export --images photos/ --conf 0.1

Classification prints class and probability per image; detection prints one line per box and saves each
image with its boxes drawn to --save-dir (default: runs/<dir>/predictions, beside export/). Images go
through the run's own eval transform (the one validation used), rebuilt from model.json.
"""


def main(argv: Sequence[str] | None = None, *, prog: str = "visattn predict") -> int:
    parser = new_parser(prog, "Predict with an exported model (ONNX through onnxruntime, or an export folder).",
                        PREDICT_EXAMPLES)
    parser.add_argument("--model", required=True, help="model.onnx, or an export folder (model.safetensors)")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", help="CSV file for the predictions (default: print only)")
    parser.add_argument("--save-dir", help="detection: folder for the images with boxes drawn")
    parser.add_argument("--conf", type=float, help="detection: minimum box score (default: the export's, 0.25)")
    parser.add_argument("--batch-size", type=int, default=16, help="(default: 16)")
    args = parser.parse_args(argv)
    from visattn.predict import predict_folder, read_spec  # after the flags: --help imports no torch

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
