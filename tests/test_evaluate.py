"""``visattn evaluate`` and the one eval preprocessing shared by validation, predict, evaluate and visualize."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.config import make_config
from visattn.evaluate import evaluate_run
from visattn.export import export_run, load_run
from visattn.predict import predict_folder, preprocess_files
from visattn.tasks.factory import build_datamodule
from visattn.training import train

SIZES = [(97, 61), (40, 150), (200, 131), (33, 33)]  # odd shapes and > 2 x img_size: resize and JPEG draft matter


def make_image_folder(root: Path) -> Path:
    """Two classes (a bright or a dark disc on noise), train/val/test sub-trees, JPEG and PNG files."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 4), ("test", 6)):
        for label, name in enumerate(("bright", "dark")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                w, h = SIZES[i % len(SIZES)]
                image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                yy, xx = np.mgrid[:h, :w]
                disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 3) ** 2
                image[disc] = 230 if label == 0 else 25
                suffix = ".jpg" if i % 2 else ".png"
                Image.fromarray(image).save(folder / f"{i}{suffix}", quality=90)
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    data = make_image_folder(base / "data")
    config = make_config({}, dict(backbone="resnet18", attn="se", data="imagefolder", data_dir=str(data), img_size=32,
                                  epochs=1, batch_size=8, num_workers=0, out=str(base / "runs"), name="run",
                                  backbone_args={"base_width": 8}))
    train(config)
    return base / "runs" / "run", data


def validation_logits(run_dir: Path, split: str = "test") -> tuple[torch.Tensor, list[Path]]:
    """Eval-mode logits of the run's model on the inputs validation builds (the data module's eval transform)."""
    from visattn.visualize import read_run_config

    model, _ = load_run(run_dir)
    datamodule = build_datamodule(read_run_config(run_dir))
    dataset = datamodule.dataset(split)
    inputs = torch.stack([dataset[i][0] for i in range(len(dataset))])  # (n, 3, S, S)
    with torch.no_grad():
        return model(inputs), list(dataset.paths)


def test_predict_from_export_matches_validation_logits(folder_run, tmp_path):
    run_dir, data = folder_run
    export_run(run_dir, formats="safetensors")
    logits, paths = validation_logits(run_dir)
    from visattn.export import load

    exported = load(run_dir / "export")
    spec = json.loads((run_dir / "export" / "model.json").read_text())
    with torch.no_grad():
        predicted = exported(torch.from_numpy(preprocess_files(paths, spec)))
    torch.testing.assert_close(predicted, logits, rtol=0, atol=1e-4)
    rows = {Path(r["image"]): r for r in predict_folder(run_dir / "export", data / "test")}
    probs = logits.softmax(-1)
    for path, row in zip(paths, probs, strict=True):
        assert rows[path]["index"] == int(row.argmax())
        assert abs(rows[path]["probability"] - float(row.max())) < 1e-4
    # the PIL (antialiased) resize predict used before differs from validation's OpenCV bilinear on these images
    old = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32), Image.BILINEAR), np.float32) / 255
                    for p in paths])  # (n, S, S, 3)
    new = preprocess_files(paths, spec).transpose(0, 2, 3, 1) * np.array(spec["std"]) + np.array(spec["mean"])
    assert np.abs(old - new).mean() > 0.01


def test_visualize_images_are_validation_inputs(folder_run):
    from visattn.visualize import read_image_folder
    from visattn.viz.figures import to_inputs

    run_dir, data = folder_run
    model, spec = load_run(run_dir)
    _, paths = validation_logits(run_dir)
    images, names = read_image_folder(data / "test", size=32, n=len(paths))
    assert [data / "test" / n for n in names] == sorted(paths)
    inputs = torch.as_tensor(to_inputs(images, mean=spec.mean, std=spec.std))
    order = [sorted(paths).index(p) for p in paths]
    reference = torch.from_numpy(preprocess_files(paths, {"img_size": 32, "mean": spec.mean, "std": spec.std}))
    torch.testing.assert_close(inputs[order].float(), reference, rtol=0, atol=1e-5)


def test_evaluate_reproduces_training_test_metrics(folder_run):
    run_dir, _ = folder_run
    result = evaluate_run(run_dir)
    saved = json.loads((run_dir / "eval-imagefolder-test.json").read_text())
    trained = json.loads((run_dir / "metrics.json").read_text())["test"]
    for key in ("acc", "f1", "loss"):
        assert saved["metrics"][key] == pytest.approx(trained[key], abs=1e-6), key
    assert "acc5" not in saved["metrics"] and "acc5" not in trained  # 2 classes: top-5 is no measurement
    matrix = np.array(saved["confusion_matrix"]["counts"])  # (true, predicted)
    assert matrix.shape == (2, 2) and matrix.sum() == saved["images"] == 12
    assert np.trace(matrix) / matrix.sum() == pytest.approx(saved["metrics"]["acc"])
    assert saved["class_names"] == ["bright", "dark"] and result["weights"] == "checkpoint best"
    assert Path(result["figure"]).is_file()


def test_evaluate_export_and_last_checkpoint_on_val(folder_run):
    run_dir, _ = folder_run
    export_run(run_dir, formats="safetensors")
    from_export = evaluate_run(run_dir, export=run_dir / "export")
    from_best = json.loads((run_dir / "eval-imagefolder-test.json").read_text()) if (
        run_dir / "eval-imagefolder-test.json").is_file() else evaluate_run(run_dir)
    assert from_export["metrics"] == pytest.approx(from_best["metrics"], abs=1e-6)
    val = evaluate_run(run_dir, checkpoint="last", split="val")
    assert val["images"] == 8 and (run_dir / "eval-imagefolder-val.json").is_file()


def test_evaluate_refuses_bad_requests(folder_run, tmp_path):
    run_dir, _ = folder_run
    with pytest.raises(ValueError, match="valid splits: test, val"):
        evaluate_run(run_dir, split="train")
    with pytest.raises(ValueError, match="10 classes but the model predicts 2"):
        evaluate_run(run_dir, data="digits")
    with pytest.raises(FileNotFoundError, match="not an export folder"):
        evaluate_run(run_dir, export=tmp_path)


def test_evaluate_detection_per_class_ap(tmp_path):
    out = tmp_path / "runs"
    config = make_config({}, dict(task="detect", backbone="csp_n", attn="eca", img_size=64, epochs=1, batch_size=8,
                                  num_workers=0, out=str(out), name="det",
                                  data_args={"num_train": 16, "num_val": 8, "num_test": 8,
                                             "cache_dir": str(tmp_path / "cache")}))
    trained = train(config)["test"]
    result = evaluate_run(out / "det")
    assert result["metrics"]["map"] == pytest.approx(trained["map"], abs=1e-6)
    assert result["metrics"]["map50"] == pytest.approx(trained["map50"], abs=1e-6)
    saved = json.loads((out / "det" / "eval-shapes-test.json").read_text())
    assert saved["per_class"] and set(saved["per_class"]) <= set(saved["class_names"])
    assert all(set(v) == {"map", "mar100"} for v in saved["per_class"].values())
