"""``visattn export``: a trained run to ONNX, TorchScript and safetensors, each verified (``visattn.export``)."""

from __future__ import annotations

from collections.abc import Sequence

from visattn.cli.main import new_parser
from visattn.config import DEFAULT_OPSET, EXPORT_FORMATS

EXPORT_EXAMPLES = """\
examples:
  {prog} --run runs/digits-resnet18-cbam-s0                       # onnx, torchscript, safetensors
  {prog} --run runs/digits-resnet18-cbam-s0 --format onnx --dynamic-batch
  {prog} --run runs/shapes-csp_n-eca-s0 --half                    # float16 (tolerance 5e-2)

Each file is checked against the eager model (real test images and random input) before it replaces
<run>/export/; report.json holds the numbers. Formats not asked for are kept from the previous export when
it came from the same checkpoint file with the same settings, and removed (the command says so) otherwise.
"""


def main(argv: Sequence[str] | None = None, *, prog: str = "visattn export") -> int:
    parser = new_parser(prog, "Export a trained run to ONNX, TorchScript and safetensors, each verified.",
                        EXPORT_EXAMPLES)
    parser.add_argument("--run", required=True, help="a run directory made by visattn train")
    parser.add_argument("--checkpoint", default="best", help="best | last | PATH (default: best)")
    parser.add_argument("--format", default=",".join(EXPORT_FORMATS),
                        help=f"comma-separated: {', '.join(EXPORT_FORMATS)} (default: all)")
    parser.add_argument("--dynamic-batch", action="store_true", help="export with a dynamic batch dimension")
    parser.add_argument("--img-size", type=int, help="input size of the export (default: the run's)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    parser.add_argument("--half", action="store_true", help="float16 weights and inputs (tolerance 5e-2)")
    parser.add_argument("--conf", type=float, help="detection: minimum box score of the ONNX file's NMS, recorded in "
                                                   "model.json; predict may go down to it (default: 0.25)")
    parser.add_argument("--iou", type=float, help="detection: IoU threshold of NMS (default: 0.6)")
    args = parser.parse_args(argv)
    from visattn.export import VERIFY_CONF, export_run  # after the flags: --help imports no torch

    report = export_run(args.run, checkpoint=args.checkpoint, formats=args.format, dynamic_batch=args.dynamic_batch,
                        img_size=args.img_size, opset=args.opset, half=args.half, conf_threshold=args.conf,
                        iou_threshold=args.iou)
    for fmt, result in report["formats"].items():
        worst = max(c["max_abs_diff"] for c in result["checks"])
        if "box_agreement" in result["checks"][0]:
            agree = f"box agreement {min(c['box_agreement'] for c in result['checks']):.0%}"
            boxes = sum(c["detections"] for c in result["checks"])
            low = sum(c.get("detections_low_conf", 0) for c in result["checks"])
            agree += (f" ({boxes} boxes at conf {report['conf_threshold']:g}; {low} candidates >= {VERIFY_CONF:g} "
                      f"before NMS)  NMS {report['nms'][fmt].split(':')[0]}")
        else:
            agree = f"top-1 agreement {min(c['top1_agreement'] for c in result['checks']):.0%}"
        print(f"{fmt:<12} {result['file']:<22} {result['bytes'] / 1e6:8.2f} MB  max |diff| {worst:.2e}  {agree}  ok")
    for name in report.get("kept_from_previous", []):
        print(f"{name}: kept from the previous export (same checkpoint file and settings)")
    for item in report.get("removed_from_previous", []):
        print(f"{item.split(' ', 1)[0]}: the previous export's file was removed {item.split(' ', 1)[1]}; export "
              "that format again to remake it")
    print(f"verified on {'real images and ' if report['real_images'] else ''}random input within "
          f"{report['tolerance']:g} ({'dynamic' if report['dynamic_batch'] else 'fixed'} batch); "
          f"report: {report['run']}/export/report.json")
    return 0
