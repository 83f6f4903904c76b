"""Predict with an exported model: ``python tools/predict.py --model runs/<dir>/export/model.onnx --images DIR``
(an alias of ``visattn predict``; see --help)."""

from visattn.cli import run_cli
from visattn.commands import predict_main

if __name__ == "__main__":
    run_cli(predict_main)
