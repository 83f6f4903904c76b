"""A missing optional package stops each command with one paragraph naming the extra (issue 23, finding 3).

Each import is blocked the way a machine without the package fails it (``sys.modules[name] = None`` makes
``import name`` raise ImportError), and the command is called as a user calls it (``visattn.commands.main``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from visattn.commands import main
from visattn.config import make_config
from visattn.export import export_run
from visattn.extras import MissingExtraError, require
from visattn.training import train


def blocked(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def run_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("extras")
    train(make_config({}, dict(backbone="resnet18", attn="se", data="digits", img_size=32, epochs=1, batch_size=16,
                                limit=32, num_workers=0, out=str(out), name="run", backbone_args={"base_width": 4})))
    export_run(out / "run", formats="onnx,safetensors")
    return out / "run"


def one_paragraph(err: str, extra: str) -> None:
    """One line of error (notes of the defaults a command chose may come before it), naming the extra."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("visattn: adamw")]
    assert len(lines) == 1, err
    assert f"pip install 'visattn[{extra}]'" in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("module", ["onnx", "onnxruntime", "onnxscript"])
def test_export_onnx_without_the_export_extra(tiny_run, monkeypatch, capsys, module):
    before = sorted(p.name for p in (tiny_run / "export").iterdir())
    blocked(monkeypatch, module)
    code, _, err = run_command(["export", "--run", str(tiny_run), "--format", "onnx"], capsys)
    assert code == 2
    one_paragraph(err, "export")
    assert repr(module) in err and "visattn export --format onnx" in err
    assert sorted(p.name for p in (tiny_run / "export").iterdir()) == before  # nothing touched


def test_export_safetensors_without_safetensors(tiny_run, monkeypatch, capsys):
    blocked(monkeypatch, "safetensors", "safetensors.torch")
    code, _, err = run_command(["export", "--run", str(tiny_run), "--format", "safetensors"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "'safetensors', which is not installed" in err and "pip install 'safetensors'" in err


def test_predict_onnx_without_onnxruntime(tiny_run, tmp_path, monkeypatch, capsys):
    Image.new("RGB", (20, 20), (200, 30, 30)).save(tmp_path / "a.png")
    blocked(monkeypatch, "onnxruntime")
    code, _, err = run_command(["predict", "--model", str(tiny_run / "export" / "model.onnx"),
                                "--images", str(tmp_path)], capsys)
    assert code == 2
    one_paragraph(err, "export")


def test_visualize_without_matplotlib(tiny_run, tmp_path, monkeypatch, capsys):
    blocked(monkeypatch, "matplotlib")
    code, _, err = run_command(["visualize", "--run", str(tiny_run), "--n", "1", "--out", str(tmp_path / "f")],
                               capsys)
    assert code == 2
    one_paragraph(err, "viz")
    assert not (tmp_path / "f").exists()


def test_evaluate_without_matplotlib_says_why_there_is_no_png(tiny_run, monkeypatch, capsys):
    blocked(monkeypatch, "matplotlib")
    code, out, err = run_command(["evaluate", "--run", str(tiny_run), "--limit", "8"], capsys)
    assert code == 0 and "eval-digits-test.json" in out
    one_paragraph(err, "viz")
    assert "confusion-matrix PNG" in err


def test_train_visualize_every_without_matplotlib(tmp_path, monkeypatch, capsys):
    blocked(monkeypatch, "matplotlib")
    code, _, err = run_command(["train", "--backbone", "resnet18", "--epochs", "1", "--limit", "16",
                                "--num-workers", "0", "--visualize-every", "1", "--out", str(tmp_path),
                                "--set", "backbone_args.base_width=4"], capsys)
    assert code == 2
    one_paragraph(err, "viz")
    assert not any(tmp_path.iterdir())  # refused before the run directory was made


def test_detection_train_without_pycocotools(tmp_path, monkeypatch, capsys):
    blocked(monkeypatch, "pycocotools", "faster_coco_eval")
    code, _, err = run_command(["train", "--task", "detect", "--backbone", "csp_n", "--epochs", "1", "--limit", "8",
                                "--img-size", "64", "--num-workers", "0", "--out", str(tmp_path)], capsys)
    assert code == 2
    one_paragraph(err, "detect")


@pytest.mark.parametrize(("module", "extra", "flags"), [("scipy", "sweep", []), ("matplotlib", "viz", []),
                                                        ("ray", "sweep", ["--executor", "ray"])])
def test_sweep_without_its_packages(tmp_path, monkeypatch, capsys, module, extra, flags):
    blocked(monkeypatch, module)
    code, _, err = run_command(["sweep", "--backbone", "resnet18", "--attn", "none,se", "--epochs", "1",
                                "--limit", "16", "--out", str(tmp_path), *flags], capsys)
    assert code == 2
    one_paragraph(err, extra)
    assert not any(tmp_path.iterdir())  # nothing trained


def test_require_names_purpose_and_extra(monkeypatch):
    blocked(monkeypatch, "wandb")
    with pytest.raises(MissingExtraError, match=r"--logger wandb needs the Python package 'wandb'.*visattn\[wandb\]"):
        require("wandb", purpose="--logger wandb")
    assert require("json", purpose="x").dumps([1]) == "[1]"
