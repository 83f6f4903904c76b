"""``visattn predict`` takes what users give it (issue 23, finding 9): an image file or a folder; an export folder,
a .onnx or a TorchScript .pt file; top-k with class names; ``--save`` draws the labels; bad input is one paragraph.

The session's tiny run (tests/conftest.py) is copied and exported once here in all three formats.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import visattn
from visattn.cli.main import main as visattn_main
from visattn.export import export_run
from visattn.predict import predict_folder
from visattn.rundir import OUTPUT_MARKER


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``visattn ARGS`` in this process: (exit code, stdout, stderr); a user error must be one paragraph."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        visattn_main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = int(info.value.code or 0)
    if code == 2:
        assert "Traceback" not in err and len([line for line in err.splitlines() if line.strip()]) == 1, err
    return code, out, err


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    """A copy of the session's tiny run (10 digit classes at 16 px), exported as ONNX, TorchScript and
    safetensors; returns its export folder."""
    run_dir = tmp_path_factory.mktemp("predict-inputs") / "run"
    shutil.copytree(tiny_run[0], run_dir)
    export_run(run_dir, formats="onnx,torchscript,safetensors")
    return run_dir / "export"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Three PNGs (one in a sub-folder) and an 80 px JPEG, which validation decodes with a JPEG draft (at half
    size)."""
    folder = tmp_path_factory.mktemp("images") / "photos"
    rng = np.random.default_rng(0)
    for name, size in (("a.png", 20), ("b.png", 24), ("sub/c.png", 18), ("d.jpg", 80)):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, quality=90)
    return folder


def probabilities(row: dict) -> list[float]:
    return [row["probability"]] + [row[f"probability_{j}"] for j in range(2, 11) if f"probability_{j}" in row]


def test_a_single_image_file_or_a_folder(exported, images, capsys):
    folder_rows = {r["image"]: r for r in predict_folder(exported, images)}
    assert sorted(folder_rows) == sorted(str(p) for p in images.rglob("*.*"))  # recursive: sub/c.png included
    one = predict_folder(exported, images / "sub" / "c.png")
    same = folder_rows[str(images / "sub" / "c.png")]
    assert len(one) == 1 and one[0]["class"] == same["class"] and one[0]["class_5"] == same["class_5"]
    assert probabilities(one[0]) == pytest.approx(probabilities(same), abs=1e-6)  # batch of 1 vs 4: float noise
    code, out, err = run(capsys, "predict", "--model", exported, "--images", images / "a.png")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{images / 'a.png'}\t") and lines[1].startswith("1 image(s)")


def test_export_folder_torchscript_and_onnx_agree(exported, images):
    assert (exported / "model.torchscript.pt").is_file()  # the name visattn export gives it
    by_folder = predict_folder(exported, images, top_k=10)
    for model in (exported / "model.torchscript.pt", exported / "model.onnx", exported / "model.safetensors"):
        rows = predict_folder(model, images, top_k=10, batch_size=3)
        assert [r["image"] for r in rows] == [r["image"] for r in by_folder]
        assert [r["index"] for r in rows] == [r["index"] for r in by_folder], model.name
        assert np.allclose([probabilities(r) for r in rows], [probabilities(r) for r in by_folder], atol=1e-5)
    # the Python API runs the same code: the same numbers on every file, the JPEG (decoded with its draft) included
    predictor = visattn.load(exported)
    for result in predictor(images, top_k=10):
        row = next(r for r in by_folder if r["image"] == result.image)
        assert result.label == row["class"]
        assert [p for _, p in result.top] == pytest.approx(probabilities(row), abs=1e-6), result.image


def test_top_k_prints_and_writes_class_names(exported, images, tmp_path, capsys):
    names = json.loads((exported / "model.json").read_text())["class_names"]
    assert len(names) == 10
    out_csv = tmp_path / "preds.csv"
    code, out, err = run(capsys, "predict", "--model", exported, "--images", images, "--top-k", 3, "--out", out_csv)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 5 and lines[-1] == "4 image(s), top 3 of 10 classes"
    for line in lines[:4]:
        image, top = line.split("\t")
        pairs = [pair.rsplit(" ", 1) for pair in top.split(", ")]
        assert len(pairs) == 3 and all(name in names for name, _ in pairs)
        values = [float(p) for _, p in pairs]
        assert values == sorted(values, reverse=True)
    with open(out_csv, newline="") as handle:
        reader = csv.DictReader(handle)
        table = list(reader)
    assert reader.fieldnames == ["image", "class", "index", "probability", "class_2", "probability_2", "class_3",
                                 "probability_3"]
    assert len(table) == 4 and all(r["class_3"] in names for r in table)
    code, out, err = run(capsys, "predict", "--model", exported, "--images", images, "--out", out_csv)  # default 5
    assert code == 0, err
    assert out.splitlines()[-1] == "4 image(s), top 5 of 10 classes"
    code, out, err = run(capsys, "predict", "--model", exported, "--images", images / "a.png", "--top-k", 50)
    assert code == 0, err
    top = out.splitlines()[0].split("\t")[1].split(", ")
    assert len(top) == 10 and sorted(p.rsplit(" ", 1)[0] for p in top) == sorted(names)  # every class, no error
    assert sum(float(p.rsplit(" ", 1)[1]) for p in top) == pytest.approx(1.0, abs=5e-3)
    code, out, _ = run(capsys, "predict", "--help")
    assert code == 0 and "at most the model's class count" in " ".join(out.split())


def test_save_draws_the_labels_on_each_image(exported, images, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    shutil.copytree(images, mixed)
    shutil.copy(mixed / "a.png", mixed / "d.png")  # d.png and d.jpg: two drawings, not one overwriting the other
    code, out, err = run(capsys, "predict", "--model", exported, "--images", mixed, "--save", "--top-k", 3)
    assert code == 0, err
    saved = exported.parent / "predictions"  # the default: beside export/, as for detection
    assert out.splitlines()[-1].endswith(f"labels drawn in {saved}")
    drawn = sorted(str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file() and p.name != OUTPUT_MARKER)
    assert drawn == ["a.png", "b.png", "d.jpg.png", "d.png", "sub/c.png"] and (saved / OUTPUT_MARKER).is_file()
    original = Image.open(mixed / "a.png").convert("RGB")
    picture = Image.open(saved / "a.png").convert("RGB")
    assert picture.size == (260, 260)  # 20 px enlarged x13 so that the text can be read
    plain = np.asarray(original.resize(picture.size, Image.Resampling.NEAREST), np.int16)
    changed = np.abs(np.asarray(picture, np.int16) - plain).max(axis=2) > 0  # (H, W)
    assert changed[:40, :40].mean() > 0.5 and changed[-60:, -60:].mean() == 0  # a label panel at the top left only
    assert Image.open(saved / "d.jpg.png").size == (320, 320)  # the full 80 px image x4, not the 40 px draft x7
    for save_dir in (mixed, mixed / "drawn"):  # outputs never land on (or in) the images
        code, out, err = run(capsys, "predict", "--model", exported, "--images", mixed, "--save-dir", save_dir)
        assert code == 2 and "--save-dir" in err and "--images" in err and out == ""
    assert not (mixed / "drawn").exists() and not (mixed / OUTPUT_MARKER).exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "predict", "--model", exported, "--images", mixed, "--save-dir", mine)
    assert code == 2 and "did not write" in err and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    code, _, err = run(capsys, "predict", "--model", exported, "--images", mixed / "a.png", "--save-dir",
                       tmp_path / "one")  # a single file: its drawing goes straight into the folder
    assert code == 0 and (tmp_path / "one" / "a.png").is_file(), err


def not_torchscript(export: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    shutil.copy(export / "model.json", folder)
    torch.save({"weight": torch.zeros(2)}, folder / "model.torchscript.pt")
    return folder / "model.torchscript.pt"


def lone_onnx(export: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "lone"
    folder.mkdir()
    shutil.copy(export / "model.onnx", folder)
    return folder / "model.onnx"


def checkpoint(export: Path, tmp_path: Path) -> Path:
    return next((export.parent / "checkpoints").glob("*.ckpt"))


def text_file(tmp_path: Path) -> Path:
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path / "notes.txt"


def broken_png(tmp_path: Path) -> Path:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but nothing else")
    return tmp_path / "broken.png"


CHOICES = ("export folder", ".onnx", "TorchScript")


@pytest.mark.parametrize(("make_model", "make_images", "expected"), [
    (None, text_file, ["notes.txt is not an image file", ".png", "folder of images"]),
    (None, broken_png, ["cannot decode image", "broken.png"]),
    (None, lambda tmp: tmp / "missing.png", ["image not found", "missing.png", "folder of images"]),
    (checkpoint, None, ["cannot predict with a .ckpt file", *CHOICES, "visattn export --run"]),
    (not_torchscript, None, ["is not a TorchScript model", "torch.save file", "model.torchscript.pt"]),
    (lone_onnx, None, ["model.json not found", "lone", *CHOICES]),
    (lambda export, tmp: export.parent, None, ["is a run directory, not an export", "visattn export --run"]),
    (lambda export, tmp: tmp / "model.onnx", None, ["model.onnx not found", *CHOICES]),
], ids=["text-file", "broken-png", "missing-image", "checkpoint", "not-torchscript", "no-model-json", "run-dir",
        "missing-model"])
def test_bad_input_is_one_paragraph_naming_the_choices(exported, images, tmp_path, capsys, make_model, make_images,
                                                      expected):
    model = make_model(exported, tmp_path) if make_model else exported
    pictures = make_images(tmp_path) if make_images else images
    code, out, err = run(capsys, "predict", "--model", model, "--images", pictures)
    assert code == 2 and out == ""
    for text in expected:
        assert text in err, (text, err)


def test_flags_of_the_other_task_are_refused(exported, images, capsys):
    code, out, err = run(capsys, "predict", "--model", exported, "--images", images, "--conf", 0.3)
    assert code == 2 and "--conf applies to detection" in err and "--top-k" in err
    code, _, err = run(capsys, "predict", "--model", exported, "--images", images, "--top-k", 0)
    assert code == 2 and "--top-k must be an integer >= 1, got 0" in err
