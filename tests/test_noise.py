"""What the commands print says what is true, and nothing else (issue 23, finding 8; finding 6 at the end)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import visattn
from visattn.cli.main import format_warning
from visattn.cli.train import chance_warning
from visattn.commands import main
from visattn.config import ConfigError, make_config
from visattn.training import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--backbone", "resnet18", "--epochs", "1", "--limit", "16", "--batch-size", "8", "--num-workers", "0",
        "--set", "backbone_args.base_width=4", "--precision", "32"]


def run_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("noise")
    train(make_config({}, dict(backbone="resnet18", attn="se", data="digits", img_size=32, epochs=1, batch_size=16,
                                limit=32, num_workers=0, out=str(out), name="run", backbone_args={"base_width": 4})))
    return out / "run"


def test_export_prints_no_raw_dict(tiny_run, capsys):
    code, out, _ = run_command(["export", "--run", str(tiny_run), "--format", "torchscript"], capsys)
    assert code == 0
    assert not [line for line in out.splitlines() if line.lstrip().startswith("{")], out
    assert "within 0.0001 (fixed batch)" in out


def test_train_is_quiet_unless_verbose(tmp_path):
    """A real command line in a subprocess (Lightning's log handlers write to the process's stderr): no banners,
    no log_every_n_steps warning on a 2-batch epoch; --verbose brings the banners back. The learning rate is so
    small that the weights stay where they started: the test accuracy is at chance and the run says so."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VISATTN_VERBOSE", None)
    base = [sys.executable, "-m", "visattn", "train", *TINY, "--out", str(tmp_path), "--lr", "1e-12"]
    quiet = subprocess.run([*base, "--name", "quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert quiet.returncode == 0, quiet.stderr
    text = quiet.stdout + quiet.stderr
    for banner in ("GPU available", "TPU available", "log_every_n_steps", "Restoring states", "`Trainer.fit` stopped"):
        assert banner not in text, text
    assert "visattn: warning: test acc" in quiet.stderr and "at chance" in quiet.stderr, quiet.stderr
    loud = subprocess.run([*base, "--name", "loud", "--verbose"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert loud.returncode == 0, loud.stderr
    assert "GPU available" in loud.stdout + loud.stderr


def test_chance_warning_follows_the_sweep_rule():
    at_chance = {"task": "classify", "test": {"acc": 0.11}, "num_classes": 10, "epochs": 3}
    assert "at chance (10 % for 10 classes)" in chance_warning(at_chance, lr=0.002)
    assert chance_warning({**at_chance, "test": {"acc": 0.6}}, lr=0.002) == ""
    assert "near 0" in chance_warning({"task": "detect", "test": {"map": 0.01}, "epochs": 1}, lr=0.002)
    assert chance_warning({"task": "detect", "test": {"map": 0.4}, "epochs": 1}, lr=0.002) == ""


def test_top5_only_where_5_is_less_than_the_classes():
    from visattn.tasks import ClassificationModule

    few = ClassificationModule(torch.nn.Identity(), num_classes=3, img_size=8)
    many = ClassificationModule(torch.nn.Identity(), num_classes=6, img_size=8)
    assert set(few.test_metrics.keys()) == {"test/acc", "test/f1"}
    assert set(many.test_metrics.keys()) == {"test/acc", "test/acc5", "test/f1"}


def test_profile_names_the_batch_and_the_precision():
    from visattn.perf import profile_training, training_report

    model = visattn.build_model("resnet18", num_classes=3, img_size=16, backbone_args={"base_width": 4})
    text = training_report(profile_training(model, input_size=(3, 3, 16, 16), steps=1, warmup=0))
    assert text.startswith("training step (batch 3, precision 32, 1 timed steps)"), text


@pytest.mark.parametrize("argv", [["train", "--epoch", "2"], ["sweep", "--seed", "2"],
                                  ["export", "--run", "x", "--form", "onnx"],
                                  ["predict", "--model", "m", "--images", "i", "--sav", "x"]])
def test_no_prefix_matching_of_flags(argv, capsys):
    code, _, err = run_command(argv, capsys)
    assert code == 2 and "unrecognized arguments" in err, err


def test_messages_name_the_visattn_command_not_tools_scripts(capsys):
    with pytest.raises(ConfigError, match="use visattn sweep to compare"):
        make_config({}, {"attn": "se,cbam"})
    code, out, _ = run_command(["train", "--help"], capsys)
    assert code == 0 and out.startswith("usage: visattn train") and "tools/" not in out
    offenders = []
    for path in (ROOT / "visattn").rglob("*.py"):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and "tools/" in node.value and ".py" in node.value):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


def test_own_warnings_print_as_one_line_without_source():
    inside = str(ROOT / "visattn" / "data" / "folders.py")
    assert format_warning(UserWarning("skipped 1  undecodable"), UserWarning, inside, 106) == \
        "visattn: warning: skipped 1 undecodable\n"
    outside = format_warning(UserWarning("x"), UserWarning, "/elsewhere/mod.py", 3, "line()")
    assert "/elsewhere/mod.py:3: UserWarning: x" in outside  # other libraries keep Python's format


def test_cache_root_is_never_the_current_directory(tmp_path, monkeypatch):
    from visattn.data.detect import shapes

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VISATTN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    site = tmp_path / "site-packages" / "visattn" / "data" / "detect" / "shapes.py"  # a pip install
    monkeypatch.setattr(shapes, "__file__", str(site))
    assert shapes.default_cache_root() == tmp_path / "xdg" / "visattn" / "data"
    monkeypatch.setattr(shapes, "__file__", str(ROOT / "visattn" / "data" / "detect" / "shapes.py"))
    assert shapes.default_cache_root() == ROOT / "data_cache"  # a source checkout
    monkeypatch.setenv("VISATTN_CACHE_DIR", str(tmp_path / "mine"))
    assert shapes.default_cache_root() == tmp_path / "mine"


def test_resume_of_a_finished_run_changes_nothing(tiny_run, capsys):
    """Finding 6 (fixed by issue 24): ``--resume`` of a finished run says so and leaves metrics.json as it was."""
    before = (tiny_run / "metrics.json").read_bytes()
    code, out, _ = run_command(["train", "--resume", str(tiny_run)], capsys)
    assert code == 0 and "finished" in out, out
    assert (tiny_run / "metrics.json").read_bytes() == before
    assert json.loads(before)["throughput_img_s"] is not None


def test_run_names_include_the_users_data_folder(tmp_path):
    """Finding 10: a second image folder no longer collides with the first run's name."""
    pets = make_config({}, {"data": "imagefolder", "data_dir": str(tmp_path / "pets")})
    birds = make_config({}, {"data": "imagefolder", "data_dir": str(tmp_path / "birds") + "/"})
    assert pets.run_name() == "imagefolder-pets-resnet18-none-s0"
    assert birds.run_name() == "imagefolder-birds-resnet18-none-s0"
    assert make_config({}, {"task": "detect", "data": "yolo", "data_dir": "~/cones"}).run_name() == \
        "yolo-cones-resnet18-none-s0"
    assert make_config({}, {}).run_name() == "digits-resnet18-none-s0"  # built-in sets keep their names


def test_sweep_table_fits_the_terminal(monkeypatch):
    import io

    from rich.console import Console

    from visattn.sweep import report

    header = ["configuration", *[f"column {i}" for i in range(12)], "verdict"]
    cells = [["resnet18+cbam@layer3.x+layer4.x", *["0.1234 ± 0.0012"] * 12,
              "better than none (p=0.003, paired t over 3 seeds; d=1.2)"]]
    monkeypatch.setattr(report, "accuracy_rows", lambda rows, metric: (header, cells))
    monkeypatch.setattr(report, "cost_rows", lambda rows, ort: (header, cells))
    terminal = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    report.print_table([], "acc", title="sweep", console=terminal)
    assert max(len(line) for line in terminal.file.getvalue().splitlines()) <= 100
    log = Console(file=io.StringIO(), width=100, force_terminal=False, color_system=None)
    report.print_table([], "acc", title="sweep", console=log)
    assert any(len(line) > 100 and "better than none" in line for line in log.file.getvalue().splitlines())
