"""Latency of onnxruntime vs eager PyTorch on CPU for exported models (batch 1, 224x224 by default).

    .venv/bin/python benchmarks/onnx_vs_eager.py [--repeats 20] [--img-size 224]

Each model is exported with ``visattn.export.export_model`` (verified against eager first), then eager
(``torch.no_grad``, eval) and onnxruntime alternate run by run; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from visattn.export import ModelSpec, export_model

ROWS = {"ResNet-50 + cbam": ("resnet50", "cbam"), "Swin-T": ("swin_t", None), "ResNet-50": ("resnet50", None),
        "ViT-S/16": ("vit_small", None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__} ({threads} threads), onnxruntime {ort.__version__}, batch 1, "
          f"{args.img_size}x{args.img_size}, median of {args.repeats}\n")
    print("| model | eager ms | onnxruntime ms | speed-up | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    for row in args.rows:
        backbone, attn = ROWS[row]
        spec = ModelSpec(task="classify", backbone=backbone, attn=attn, num_classes=1000, in_chans=3,
                         img_size=args.img_size, backbone_args={}, class_names=[], mean=[0.5] * 3, std=[0.25] * 3)
        model = spec.build().eval()
        with tempfile.TemporaryDirectory() as folder:
            report = export_model(model, spec, Path(folder), formats=["onnx"], dynamic_batch=False)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(Path(folder) / "model.onnx"), options,
                                           providers=["CPUExecutionProvider"])
        x = torch.randn(1, 3, args.img_size, args.img_size)
        feed = {"x": x.numpy()}
        times: dict[str, list[float]] = {"eager": [], "ort": []}
        with torch.no_grad():
            model(x), session.run(None, feed)  # warm-up
            for _ in range(args.repeats):
                start = time.perf_counter()
                model(x)
                times["eager"].append(time.perf_counter() - start)
                start = time.perf_counter()
                session.run(None, feed)
                times["ort"].append(time.perf_counter() - start)
        eager, onnx_ms = (statistics.median(times[k]) * 1e3 for k in ("eager", "ort"))
        diff = max(c["max_abs_diff"] for c in report["formats"]["onnx"]["checks"])
        print(f"| {row} | {eager:.1f} | {onnx_ms:.1f} | {eager / onnx_ms:.2f}x | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
