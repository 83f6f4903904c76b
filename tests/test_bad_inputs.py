"""Bad inputs get one clear error naming the file or value (exit 2 from the tools), or are skipped and counted.

Image files (truncated, over PIL's pixel limit, 16/32-bit), label files (encoding, BOM), COCO files (paths,
ids, missing annotations), predict (batch mode, --batch-size, --out), pretrained reports, stale export staging.
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visattn.data import DataError
from visattn.data.detect.readers import read_coco, read_yolo
from visattn.data.folders import ImageFileDataset, load_image_folder

REPO = Path(__file__).resolve().parents[1]


def run_tool(script: str, argv: list[str], capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """Run ``tools/<script>`` in this process as a user would; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", [script, *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "tools" / script), run_name="__main__")
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    """Exit 2, no traceback, and the error is one paragraph (the last line, ``visattn: error: ...``) naming every
    needle; notes printed before it (e.g. the optimizer defaults) are allowed."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("visattn: error:") and sum("error" in x for x in lines) == 1, err
    for needle in needles:
        assert needle in lines[-1], (needle, err)


def jpeg(path: Path, size: int = 24, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def image_folder(root: Path, per_class: int = 5) -> Path:
    for c, name in enumerate(("a", "b")):
        for i in range(per_class):
            jpeg(root / name / f"{i}.jpg", seed=10 * c + i)
    return root


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


# ------------------------------------------------------------ truncated JPEG
def test_truncated_jpeg_found_up_front(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data")
    bad = truncate(root / "b" / "3.jpg")
    with Image.open(bad) as im:
        im.verify()  # the old check passed it
    with pytest.raises(DataError, match=r"b/3\.jpg.*truncated"):
        load_image_folder(data_dir=root)
    source = load_image_folder(data_dir=root, skip_bad_images=True)
    assert source.skipped == [bad]
    kept = [p for split in source.splits.values() for p in split.paths]
    assert bad not in kept and len(kept) == 9
    for split in source.splits.values():  # every kept file decodes: training and test never meet a bad one
        for i in range(len(split)):
            assert split.raw(i).shape == (24, 24, 3)


def test_jpeg_with_trailing_bytes_is_kept(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data")
    path = root / "a" / "0.jpg"
    path.write_bytes(path.read_bytes() + b"camera maker notes")  # no end marker last, yet complete
    assert len([p for s in load_image_folder(data_dir=root).splits.values() for p in s.paths]) == 10


def test_truncated_jpeg_in_test_split_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The reported case: the bad file is in test/, so it used to fail only after training, leaving a run."""
    root = tmp_path / "data"
    image_folder(root / "train")
    image_folder(root / "test", per_class=2)
    truncate(root / "test" / "a" / "1.jpg")
    out = tmp_path / "runs"
    argv = ["--data", "imagefolder", "--data-dir", str(root), "--epochs", "1", "--img-size", "32", "--num-workers",
            "0", "--batch-size", "4", "--out", str(out), "--set", "backbone_args={base_width: 8}"]
    code, _, err = run_tool("train.py", [*argv, "--name", "t"], capsys, monkeypatch)
    assert_user_error(code, err, "test/a/1.jpg", "truncated", "--skip-bad-images")
    assert not (out / "t" / "checkpoints").exists()
    code, _, err = run_tool("train.py", [*argv, "--name", "skip", "--skip-bad-images"], capsys, monkeypatch)
    assert code == 0, err
    metrics = json.loads((out / "skip" / "metrics.json").read_text())
    assert metrics["skipped_images"] == 1 and metrics["test"]["acc"] is not None


# ------------------------------------------------------------ pixel limit
def test_over_pixel_limit_in_image_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = image_folder(tmp_path / "data")
    big = jpeg(root / "a" / "big.jpg", size=64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 24x24 = 576 is fine, 64x64 = 4096 > 2 x 1000
    with pytest.raises(DataError, match=r"big\.jpg.*DecompressionBombError"):
        load_image_folder(data_dir=root)
    assert load_image_folder(data_dir=root, skip_bad_images=True).skipped == [big]
    with pytest.raises(DataError, match=r"big\.jpg.*DecompressionBombError"):  # and at load time
        ImageFileDataset([big], np.zeros(1)).raw(0)


def test_over_pixel_limit_in_yolo_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "yolo"
    for split, size in (("train", 24), ("val", 24)):
        jpeg(root / "images" / split / "ok.jpg", size=size)
    big = jpeg(root / "images" / "train" / "big.jpg", size=64)
    (root / "classes.txt").write_text("a\n")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match=r"yolo: cannot read image file .*big\.jpg \(DecompressionBombError"):
        read_yolo(root)
    source = read_yolo(root, skip_bad_images=True)
    assert source.skipped == [big] and [r.path.name for r in source.splits["train"]] == ["ok.jpg"]


def test_over_pixel_limit_in_coco_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = coco_set(tmp_path / "coco")
    big = jpeg(root / "images" / "train" / "big.jpg", size=64)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    coco["images"].append({"id": 9, "file_name": "big.jpg"})  # no width/height: read from the file
    (root / "annotations" / "instances_train.json").write_text(json.dumps(coco))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DataError, match=r"cannot read image file .*big\.jpg \(DecompressionBombError"):
        read_coco(root)
    assert read_coco(root, skip_bad_images=True).skipped == [big]


# ------------------------------------------------------------ 16-bit, 32-bit, float
def test_16bit_png_scaled_like_opencv(tmp_path: Path) -> None:
    import cv2

    values = np.linspace(0, 65535, 24 * 24).round().astype(np.uint16).reshape(24, 24)  # spans 0..65535
    root = image_folder(tmp_path / "data")
    path = root / "a" / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    source = load_image_folder(data_dir=root)
    split = next(s for s in source.splits.values() if path in s.paths)
    rgb = split.raw(split.paths.index(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (24, 24, 3)
    assert (rgb[..., 0] == rgb[..., 2]).all()
    assert np.array_equal(rgb[..., 0], (values >> 8).astype(np.uint8))  # not saturated at 255
    reference = cv2.imread(str(path), cv2.IMREAD_COLOR)  # the detection path's reader
    assert np.array_equal(rgb, reference[..., ::-1])


@pytest.mark.parametrize(("dtype", "mode"), [(np.int32, "I"), (np.float32, "F")])
def test_32bit_and_float_refused_by_name(tmp_path: Path, dtype: type, mode: str) -> None:
    root = image_folder(tmp_path / "data")
    path = root / "b" / "wide.tiff"
    Image.fromarray(np.full((24, 24), 3, dtype)).save(path)
    with pytest.raises(DataError, match=rf"wide\.tiff.*PIL mode {mode}\)"):
        load_image_folder(data_dir=root)
    assert load_image_folder(data_dir=root, skip_bad_images=True).skipped == [path]
    with pytest.raises(DataError, match=rf"wide\.tiff has 32-bit .* \(PIL mode {mode}\).*convert it"):
        ImageFileDataset([path], np.zeros(1)).raw(0)


# ------------------------------------------------------------ label file encodings
def yolo_set(root: Path, label: bytes, names: bytes = b"a\nb\n") -> Path:
    for split in ("train", "val"):
        jpeg(root / "images" / split / "x.jpg")
    (root / "labels" / "train").mkdir(parents=True)
    (root / "labels" / "train" / "x.txt").write_bytes(label)
    (root / "classes.txt").write_bytes(names)
    return root


def test_label_files_utf8_bom_accepted(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    source = read_yolo(yolo_set(tmp_path / "y", bom + b"1 0.5 0.5 0.5 0.5\n", bom + "chat\nb\u00e9b\u00e9\n".encode()))
    assert source.class_names == ["chat", "b\u00e9b\u00e9"]
    assert source.splits["train"][0].labels.tolist() == [1]
    root = tmp_path / "yaml"
    yolo_set(root, b"0 0.5 0.5 0.5 0.5\n", b"")
    (root / "classes.txt").unlink()
    (root / "data.yaml").write_bytes(bom + "names: [caf\u00e9]\n".encode())
    assert read_yolo(root).class_names == ["caf\u00e9"]
    coco = coco_set(tmp_path / "c")
    path = coco / "annotations" / "instances_train.json"
    path.write_bytes(bom + path.read_bytes())
    assert len(read_coco(coco).splits["train"]) == 1


@pytest.mark.parametrize("which", ["label", "names", "yaml", "coco"])
def test_label_files_not_utf8_named(tmp_path: Path, which: str) -> None:
    latin1 = "caf\u00e9\n".encode("latin-1")
    if which == "coco":
        root = coco_set(tmp_path / "c")
        path = root / "annotations" / "instances_val.json"
        path.write_bytes(path.read_bytes().replace(b'"c3"', b'"caf\xe9"'))
        reader = read_coco
    else:
        root = yolo_set(tmp_path / "y", latin1 if which == "label" else b"0 0.5 0.5 0.5 0.5\n",
                        latin1 if which == "names" else b"a\n")
        path = {"label": root / "labels" / "train" / "x.txt", "names": root / "classes.txt"}.get(which)
        if which == "yaml":
            (root / "classes.txt").unlink()
            path = root / "data.yaml"
            path.write_bytes(b"names: [" + latin1.strip() + b"]\n")
        reader = read_yolo
    with pytest.raises(DataError, match=rf"{path.name} is not UTF-8 text.*save it as UTF-8"):
        reader(root)


# ------------------------------------------------------------ COCO
def coco_set(root: Path, *, train_images: list[dict] | None = None, annotations: bool = True) -> Path:
    """Two 24x24 JPEGs (train x.jpg, val y.jpg), one box each, categories 3 ('c3') and 7."""
    jpeg(root / "images" / "train" / "x.jpg")
    jpeg(root / "images" / "val" / "y.jpg")
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, name in (("train", "x.jpg"), ("val", "y.jpg")):
        images = train_images if (split == "train" and train_images is not None) else [
            {"id": 1, "file_name": name, "width": 24, "height": 24}]
        coco = {"images": images, "categories": [{"id": 3, "name": "c3"}, {"id": 7, "name": "c7"}]}
        if annotations:
            coco["annotations"] = [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [2, 2, 10, 10]}]
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    return root


def test_coco_file_name_confined_to_root(tmp_path: Path) -> None:
    outside = jpeg(tmp_path / "secret.jpg")
    for file_name in ("../../../secret.jpg", str(outside)):
        root = coco_set(tmp_path / f"c{len(file_name)}",
                        train_images=[{"id": 1, "file_name": file_name, "width": 24, "height": 24}])
        with pytest.raises(DataError, match=r"file_name .*secret\.jpg.*instances_train\.json.*outside the data "
                                            r"root"):
            read_coco(root)
        with pytest.raises(DataError, match="outside the data root"):
            read_coco(root, skip_bad_images=True)
    inside = tmp_path / "inside" / "images" / "train" / "x.jpg"
    root = coco_set(tmp_path / "inside", train_images=[{"id": 1, "file_name": str(inside)}])
    assert read_coco(root).splits["train"][0].path == inside  # an absolute path inside the root is fine


def test_coco_duplicate_image_id(tmp_path: Path) -> None:
    jpeg(tmp_path / "c" / "images" / "train" / "z.jpg")
    root = coco_set(tmp_path / "c", train_images=[{"id": 1, "file_name": "x.jpg", "width": 24, "height": 24},
                                                  {"id": 1, "file_name": "z.jpg", "width": 24, "height": 24}])
    with pytest.raises(DataError, match=r"duplicate image id 1 in .*instances_train\.json"):
        read_coco(root)


def test_coco_without_annotations_refused(tmp_path: Path) -> None:
    root = coco_set(tmp_path / "c", annotations=False)
    with pytest.raises(DataError, match=r"instances_train\.json has no 'annotations' list.*\"annotations\": \[\]"):
        read_coco(root)
    path = root / "annotations" / "instances_train.json"
    coco = json.loads(path.read_text())
    path.write_text(json.dumps({**coco, "annotations": []}))  # an explicit empty list is fine ...
    with pytest.raises(DataError, match=r"instances_val\.json has no 'annotations'"):  # ... val needs one too
        read_coco(root)


# ------------------------------------------------------------ predict
def static_export(folder: Path) -> Path:
    """A tiny untrained classifier exported as the default does (static batch 1): model.onnx + model.json."""
    import torch

    from visattn.export import ModelSpec, export_model

    spec = ModelSpec(task="classify", backbone="resnet18", attn=None, img_size=32, backbone_args={"base_width": 8},
                     num_classes=3, in_chans=3, class_names=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3)
    torch.manual_seed(0)
    folder.mkdir(parents=True)
    export_model(spec.build().eval(), spec, folder, formats=["onnx", "safetensors"], dynamic_batch=False)
    return folder


@pytest.fixture(scope="module")
def classify_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return static_export(tmp_path_factory.mktemp("export") / "export")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i in range(5):
        jpeg(folder / f"{i}.jpg", size=40 + 3 * i, seed=i)
    return folder


def test_predict_static_batch_onnx_with_many_images(classify_export: Path, photos: Path) -> None:
    import onnxruntime as ort

    from visattn.predict import predict_folder

    session = ort.InferenceSession(str(classify_export / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == 1  # the default export really is static
    for batch_size in (1, 2, 16):
        rows = predict_folder(classify_export / "model.onnx", photos, batch_size=batch_size)
        eager = predict_folder(classify_export, photos, batch_size=batch_size)  # safetensors: any batch
        assert [r["image"] for r in rows] == sorted(str(p) for p in photos.iterdir())
        assert [r["index"] for r in rows] == [r["index"] for r in eager]
        assert np.allclose([r["probability"] for r in rows], [r["probability"] for r in eager], atol=1e-4)


def test_predict_static_batch_onnx_detection(tmp_path: Path, photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detection path feeds a static graph one image at a time too (a fake session stands in for a detector
    export, which costs ~50 s to make here): each image gets its own box, identified by its score."""
    import onnxruntime

    from visattn.predict import predict_folder

    class StaticSession:
        def __init__(self, path: str, providers: object = None) -> None:
            pass

        def get_inputs(self) -> list[object]:
            return [type("Input", (), {"name": "x", "shape": [1, 3, 32, 32]})()]

        def run(self, names: object, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            x = feed["x"]
            assert x.shape[0] == 1, "a static-batch graph was fed a batch"
            box = [0.0, 1.0, 1.0, 2.0, 3.0, 0.9, 0.0]  # batch, x0, y0, x1, y1, score, class
            box[5] = 0.5 + 0.1 * float(np.tanh(x.mean()))  # (1, 7): the score marks which image it came from
            return np.zeros((1, 10, 7), np.float32), np.array([box], np.float32)

    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "model.json").write_text(json.dumps({"task": "detect", "img_size": 32, "num_classes": 1,
                                                     "class_names": ["a"], "mean": [0.5] * 3, "std": [0.25] * 3}))
    monkeypatch.setattr(onnxruntime, "InferenceSession", StaticSession)
    rows = predict_folder(tmp_path / "model.onnx", photos, batch_size=3, save_dir=tmp_path / "drawn")
    single = predict_folder(tmp_path / "model.onnx", photos, batch_size=1)
    assert [r["image"] for r in rows] == sorted(str(p) for p in photos.iterdir())
    assert [r["score"] for r in rows] == [r["score"] for r in single] and len({r["score"] for r in rows}) == 5


@pytest.mark.parametrize("value", ["0", "-1"])
def test_predict_bad_batch_size(classify_export: Path, photos: Path, tmp_path: Path, value: str,
                                capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "p.csv"
    code, stdout, err = run_tool("predict.py", ["--model", str(classify_export / "model.onnx"), "--images",
                                                str(photos), "--batch-size", value, "--out", str(out)],
                                 capsys, monkeypatch)
    assert_user_error(code, err, f"--batch-size must be an integer >= 1, got {value}")
    assert not out.exists() and stdout == ""


def test_predict_out_directory_refused_before_inference(classify_export: Path, photos: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import visattn.predict

    def no_inference(*args: object, **kwargs: object) -> None:
        raise AssertionError("inference started before --out was checked")

    monkeypatch.setattr(visattn.predict, "onnx_runner", no_inference, raising=False)
    monkeypatch.setattr(visattn.predict, "preprocess", no_inference)
    target = tmp_path / "results"
    target.mkdir()
    code, stdout, err = run_tool("predict.py", ["--model", str(classify_export / "model.onnx"), "--images",
                                                str(photos), "--out", str(target)], capsys, monkeypatch)
    assert_user_error(code, err, f"--out {target} is a directory", str(target / "predictions.csv"))
    assert list(target.iterdir()) == [] and stdout == ""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_tool("predict.py", ["--model", str(classify_export / "model.onnx"), "--images",
                                           str(photos), "--out", str(blocker / "p.csv")], capsys, monkeypatch)
    assert_user_error(code, err, f"{blocker} is a file")


def test_predict_out_written_whole_with_parents(classify_export: Path, photos: Path, tmp_path: Path) -> None:
    from visattn.predict import predict_folder

    out = tmp_path / "new" / "deeper" / "p.csv"
    rows = predict_folder(classify_export / "model.onnx", photos, out_csv=out)
    assert len(out.read_text().splitlines()) == len(rows) + 1 and not list(out.parent.glob(".*.tmp"))


def test_predict_bad_images_named(classify_export: Path, photos: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "imgs"
    big = jpeg(folder / "big.jpg", size=64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    code, _, err = run_tool("predict.py", ["--model", str(classify_export / "model.onnx"), "--images",
                                           str(folder)], capsys, monkeypatch)
    assert_user_error(code, err, str(big), "DecompressionBombError")
    from visattn.predict import open_rgb

    deep = folder / "deep.png"
    Image.fromarray(np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)).save(deep)
    grey = np.asarray(open_rgb(deep))
    assert grey.dtype == np.uint8 and grey.max() == 255 and grey.min() == 0 and len(np.unique(grey)) > 32
    Image.fromarray(np.ones((8, 8), np.float32)).save(folder / "float.tiff")
    big.unlink()
    code, _, err = run_tool("predict.py", ["--model", str(classify_export / "model.onnx"), "--images",
                                           str(folder)], capsys, monkeypatch)
    assert_user_error(code, err, "float.tiff", "PIL mode F")


# ------------------------------------------------------------ pretrained weights with another class count
def test_pretrained_reinitialised_classifier_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import visattn

    weights = tmp_path / "ten_classes.pth"
    torch.save(visattn.build_model("resnet18", num_classes=10, backbone_args={"base_width": 8}).state_dict(), weights)
    root = image_folder(tmp_path / "data")
    code, out, err = run_tool("train.py", ["--data", "imagefolder", "--data-dir", str(root), "--epochs", "1",
                                           "--img-size", "32", "--batch-size", "4", "--num-workers", "0",
                                           "--out", str(tmp_path / "runs"), "--name", "ft", "--pretrained",
                                           str(weights), "--set", "backbone_args={base_width: 8}"],
                              capsys, monkeypatch)
    assert code == 0, err
    line = next(x for x in (out + err).splitlines() if x.startswith("visattn: pretrained:"))
    assert f"loaded 120 tensors from {weights}" in line
    assert "re-initialised: fc.weight (shape mismatch: (10, 64) in file, (2, 64) in model); fc.bias" in line


# ------------------------------------------------------------ interrupted export
def fake_run(run_dir: Path) -> Path:
    """A run directory as tools/train.py leaves it (config.yaml, checkpoints/best.ckpt), without training."""
    import torch

    import visattn
    from visattn.config import make_config
    from visattn.rundir import save_config

    config = make_config({}, dict(backbone="resnet18", data="digits", img_size=32, backbone_args={"base_width": 8},
                                  out=str(run_dir.parent), name=run_dir.name, limit=8))
    (run_dir / "checkpoints").mkdir(parents=True)
    save_config(config, run_dir / "config.yaml")
    model = visattn.build_model("resnet18", num_classes=10, backbone_args={"base_width": 8})
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}},
               run_dir / "checkpoints" / "best.ckpt")
    return run_dir


def test_export_killed_leaves_staging_that_next_export_removes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import time

    from visattn.export import export_run

    run = fake_run(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "export.py"), "--run", str(run), "--format", "onnx"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(run.glob(".export-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        staging = list(run.glob(".export-*"))
        assert staging, "the export never started staging"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert all(p.exists() for p in staging) and not (run / "export").exists()  # what the kill leaves
    assert f".export-{proc.pid}@" in staging[0].name
    alive = run / f".export-{os.getpid()}@{staging[0].name.split('@', 1)[1]}"  # a live export (this process)
    alive.mkdir()
    foreign = run / ".export-notours"
    foreign.mkdir()
    export_run(run, formats="torchscript")
    assert sorted(p.name for p in run.glob(".export-*")) == sorted([alive.name, foreign.name])
    assert (run / "export" / "model.torchscript.pt").is_file()


def test_export_killed_between_renames_puts_previous_back(tmp_path: Path) -> None:
    from visattn.export import remove_stale_staging

    run = tmp_path / "run"
    run.mkdir()
    dead = 2**22 + 12345  # above the usual pid_max of 4194304: no such process
    import socket

    host = "".join(c if c.isalnum() or c in "._-" else "_" for c in socket.gethostname())
    previous = run / f".export-previous-.export-{dead}@{host}-abcd1234"  # export/ moved aside ...
    (previous / "model.json").parent.mkdir()
    (previous / "model.json").write_text("{}")
    new = run / f".export-{dead}@{host}-abcd1234"  # ... and the new one never took its place
    new.mkdir()
    assert sorted(p.name for p in remove_stale_staging(run)) == [new.name]
    assert (run / "export" / "model.json").read_text() == "{}" and not list(run.glob(".export-*"))


def test_export_verifies_on_real_images_of_a_run_that_skipped_files(tmp_path: Path) -> None:
    """The truncated file a --skip-bad-images run left out must not push export back to random input."""
    import warnings

    from visattn.export import ModelSpec, sample_images

    root = image_folder(tmp_path / "data")
    truncate(root / "a" / "1.jpg")
    config = {"data": "imagefolder", "data_dir": str(root), "skip_bad_images": True}
    spec = ModelSpec(task="classify", backbone="resnet18", attn=None, num_classes=2, in_chans=3, img_size=32,
                     backbone_args={}, class_names=["a", "b"], mean=[0.5] * 3, std=[0.25] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "verification uses random input only" would fail here
        images = sample_images(spec, config, 2, 32)
    assert images is not None and images.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("reader", ["yolo", "coco"])
def test_truncated_jpeg_in_detection_readers(tmp_path: Path, reader: str) -> None:
    """OpenCV decodes a truncated JPEG with its missing part grey and no error: the readers catch it first."""
    import cv2

    root = yolo_set(tmp_path / "y", b"0 0.5 0.5 0.5 0.5\n") if reader == "yolo" else coco_set(tmp_path / "c")
    bad = truncate(root / "images" / "train" / "x.jpg")
    assert cv2.imread(str(bad)) is not None  # what the detection path would have trained on
    read = read_yolo if reader == "yolo" else read_coco
    with pytest.raises(DataError, match=r"cannot read image file .*train/x\.jpg \(truncated: OSError"):
        read(root)
    assert read(root, skip_bad_images=True).skipped == [bad]


def test_cifar_class_names_not_utf8_named(tmp_path: Path) -> None:
    import pickle

    from visattn.data import load_cifar

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"):
        pixels = np.zeros((3, 3072), np.uint8)
        (folder / name).write_bytes(pickle.dumps({b"data": pixels, b"labels": [0, 1, 2]}, protocol=2))
    names = [f"c{i}".encode() for i in range(9)] + ["caf\u00e9".encode("latin-1")]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    with pytest.raises(DataError, match=r"class names in .*batches\.meta are not UTF-8"):
        load_cifar(data_dir=tmp_path, val_ratio=0)
