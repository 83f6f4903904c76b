"""Predict with an exported model: ``python tools/predict.py --model runs/<dir>/export/model.onnx --images DIR``.

Classification prints class and probability per image; detection prints one line per box and saves each
image with its boxes drawn to ``--save-dir`` (default: ``runs/<dir>/predictions``, beside ``export/``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from visattn.cli import run_cli
from visattn.predict import predict_folder, read_spec


def main() -> int:
    parser = argparse.ArgumentParser(prog="tools/predict.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model.onnx, or an export folder (model.safetensors)")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", help="CSV file for the predictions (default: print only)")
    parser.add_argument("--save-dir", help="detection: folder for the images with boxes drawn")
    parser.add_argument("--conf", type=float, help="detection: minimum box score (default: the export's, 0.25)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
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


if __name__ == "__main__":
    run_cli(main)
