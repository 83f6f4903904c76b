"""Predict with an exported model: ``python tools/predict.py --model runs/<dir>/export/model.onnx --images DIR``."""

from __future__ import annotations

import argparse

from visattn.cli import run_cli
from visattn.predict import predict_folder


def main() -> int:
    parser = argparse.ArgumentParser(prog="tools/predict.py", description=__doc__)
    parser.add_argument("--model", required=True, help="model.onnx, or an export folder (model.safetensors)")
    parser.add_argument("--images", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out", help="CSV file for the predictions (default: print only)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    rows = predict_folder(args.model, args.images, batch_size=args.batch_size, out_csv=args.out)
    for row in rows:
        print(f"{row['image']}\t{row['class']}\t{row['probability']:.3f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
