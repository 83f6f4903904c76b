"""Predict with an exported model: ``python tools/predict.py --model runs/<dir>/export/model.onnx --images DIR``
(an alias of ``visattn predict``; see --help)."""

from visattn.cli.main import run_cli
from visattn.cli.predict import main

if __name__ == "__main__":
    run_cli(main)
