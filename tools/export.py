"""Export a trained run: ``python tools/export.py --run runs/<dir> --format onnx,torchscript,safetensors``."""

from __future__ import annotations

import argparse
import json

from visattn.cli import run_cli
from visattn.export import DEFAULT_OPSET, FORMATS, export_run


def main() -> int:
    parser = argparse.ArgumentParser(prog="tools/export.py", description=__doc__)
    parser.add_argument("--run", required=True, help="a run directory made by tools/train.py")
    parser.add_argument("--checkpoint", default="best", help="best | last | PATH (default: best)")
    parser.add_argument("--format", default=",".join(FORMATS), help=f"comma-separated: {', '.join(FORMATS)}")
    parser.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch dimension")
    parser.add_argument("--img-size", type=int, help="input size of the export (default: the run's)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--half", action="store_true", help="float16 weights and inputs (tolerance 5e-2)")
    args = parser.parse_args()
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


if __name__ == "__main__":
    run_cli(main)
