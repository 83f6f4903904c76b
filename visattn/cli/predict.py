"""``visattn predict``: images through an exported model (``visattn.predict``)."""

from __future__ import annotations

from collections.abc import Sequence

from visattn.cli.main import new_parser

PREDICT_EXAMPLES = """\
examples:
  {prog} --model runs/digits-resnet18-cbam-s0/export --images my_images/ --top-k 3 --save
  {prog} --model runs/digits-resnet18-cbam-s0/export/model.onnx --images photo.jpg --out preds.csv
  {prog} --model runs/digits-resnet18-cbam-s0/export/model.torchscript.pt --images my_images/
  {prog} --model runs/shapes-csp_n-eca-s0/export --images photos/ --conf 0.1

--model is what visattn export wrote: the export folder (model.safetensors; without it, its TorchScript or ONNX
file), model.onnx (needs the [export] extra) or model.torchscript.pt, with model.json beside it. Images go through
the run's own eval transform (the one validation used), rebuilt from model.json.

Classification prints one line per image, its top-k classes with their probabilities, best first
("image<TAB>7 0.912, 1 0.041, ..."); --out writes them as class, index, probability, class_2, probability_2, ...
Detection prints one line per box (image, class, score, x0 y0 x1 y1 in the image's pixels) and always saves each
image with its boxes drawn. Drawn images are PNGs in --save-dir (default: runs/<dir>/predictions, beside export/),
which must be new, empty or a folder predict made, and never the images' folder.
"""


def main(argv: Sequence[str] | None = None, *, prog: str = "visattn predict") -> int:
    parser = new_parser(prog, "Predict with an exported model (an export folder, ONNX or TorchScript).",
                        PREDICT_EXAMPLES)
    parser.add_argument("--model", required=True,
                        help="an export folder, model.onnx or model.torchscript.pt (model.json beside it)")
    parser.add_argument("--images", required=True, help="an image file, or a folder of images (searched recursively)")
    parser.add_argument("--top-k", type=int, help="classification: how many classes to print and write per image, "
                                                  "best first (default: 5; at most the model's class count: a "
                                                  "larger K gives every class)")
    parser.add_argument("--save", action="store_true",
                        help="classification: save each image with its top-k labels drawn (detection always saves)")
    parser.add_argument("--save-dir", help="folder for the drawn images (implies --save; default: "
                                           "runs/<dir>/predictions)")
    parser.add_argument("--conf", type=float, help="detection: minimum box score (default: the export's, 0.25)")
    parser.add_argument("--out", help="CSV file for the predictions (default: print only)")
    parser.add_argument("--batch-size", type=int, default=16, help="(default: 16)")
    args = parser.parse_args(argv)
    from visattn.errors import ConfigError  # after the flags: --help imports no torch
    from visattn.predict import default_save_dir, format_row, model_file, predict_folder, read_spec

    spec = read_spec(model_file(args.model))
    detect = spec.get("task") == "detect"
    if detect and args.top_k is not None:
        raise ConfigError(f"--top-k applies to classification; {args.model} is a detection model (its boxes are "
                          "filtered by --conf)")
    if not detect and args.conf is not None:
        raise ConfigError(f"--conf applies to detection; {args.model} is a classification model (use --top-k)")
    save_dir = args.save_dir
    if save_dir is None and (detect or args.save):
        save_dir = default_save_dir(args.model)
    top_k = 5 if args.top_k is None else args.top_k
    rows = predict_folder(args.model, args.images, batch_size=args.batch_size, out_csv=args.out, save_dir=save_dir,
                          conf_threshold=args.conf, top_k=top_k)
    for row in rows:
        print(format_row(row))
    drawn = f"; images with {'boxes' if detect else 'labels'} drawn in {save_dir}" if save_dir is not None else ""
    if detect:
        print(f"{len(rows)} boxes{drawn}")
    else:
        print(f"{len(rows)} image(s), top {min(top_k, spec['num_classes'])} of {spec['num_classes']} classes{drawn}")
    return 0
