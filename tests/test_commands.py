"""The ``visattn`` program: dispatch, packaged configs, --help, --print-config, data-aware defaults, profile flags."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import yaml

import visattn
from visattn.cli.main import COMMANDS, main, run_cli
from visattn.cli.profile import main as profile_main
from visattn.cli.train import train_parser
from visattn.config import ConfigError, make_config, packaged_configs, resolve_config
from visattn.tasks.common import quiet_lightning

ROOT = Path(__file__).resolve().parents[1]


def python_m_visattn(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # as installed, from a folder that is not the checkout
    return subprocess.run([sys.executable, "-m", "visattn", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_every_issue_command_is_there():
    assert set(COMMANDS) == {"train", "sweep", "export", "predict", "visualize", "profile", "blocks", "evaluate"}


def test_packaged_configs_match_the_top_level_folder():
    names = set(packaged_configs())
    on_disk = {p.relative_to(ROOT / "configs").with_suffix("").as_posix() for p in (ROOT / "configs").glob("*/*.yaml")}
    assert names == on_disk and "classify/digits_resnet18_cbam" in names


@pytest.mark.parametrize("name", ["digits_resnet18_cbam", "digits_resnet18_cbam.yaml", "classify/digits_resnet18_cbam",
                                  "configs/classify/digits_resnet18_cbam.yaml"])
def test_config_by_name(name):
    assert resolve_config(name).read_text() == (ROOT / "configs/classify/digits_resnet18_cbam.yaml").read_text()


def test_config_path_wins_and_unknown_name_lists_the_packaged_ones(tmp_path):
    own = tmp_path / "digits_resnet18_cbam.yaml"
    own.write_text("epochs: 1\n")
    assert resolve_config(own) == own
    with pytest.raises(ConfigError, match=r"Did you mean 'digits_resnet18_cbam'\?.*shapes_csp_n_eca"):
        resolve_config("digits_resnet18_cbm")


def test_print_config_from_another_folder_by_name(tmp_path):
    done = python_m_visattn("train", "--config", "digits_resnet18_cbam", "--epochs", "3", "--print-config",
                            cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert (config["attn"], config["epochs"], config["img_size"], config["data"]) == ("cbam", 3, 32, "digits")
    assert not list(tmp_path.iterdir())  # printing trains nothing and makes no run directory


def test_program_dispatch_version_and_unknown_command(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"visattn {visattn.__version__}"
    with pytest.raises(SystemExit) as stop:
        main(["trian"])
    assert stop.value.code == 2 and "Did you mean 'train'?" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2 and "evaluate" in capsys.readouterr().out


def test_train_help_shows_applied_defaults_and_choices():
    text = " ".join(train_parser("visattn train").format_help().split())
    assert "usage: visattn train" in text
    for expected in ("(default: 15)", "digits/cifar 32", "cluttered-digits 64", "imagefolder 224",
                     "shapes/coco/yolo 160", "64 (classify), 16 (detect)", "--print-config", "--version", "examples:"):
        assert expected in text, expected
    for name in [*visattn.list_backbones(), *visattn.list_attention(), "cluttered-digits", "coco", "yolo"]:
        assert name in text, name


@pytest.mark.parametrize(("data", "task", "size", "note"), [
    ("digits", "classify", 32, False), ("cluttered-digits", "classify", 64, False), ("cifar", "classify", 32, False),
    ("imagefolder", "classify", 224, True), ("shapes", "detect", 160, False), ("coco", "detect", 160, True),
    ("yolo", "detect", 160, True),
])
def test_image_size_defaults_by_data_set(capsys, data, task, size, note):
    config = make_config({}, {"data": data, "task": task})
    assert config.img_size == size and config.epochs == 15
    err = capsys.readouterr().err
    assert (f"img_size {size}" in err) == note
    assert make_config({}, {"data": data, "task": task, "img_size": 48}).img_size == 48
    assert "img_size" not in capsys.readouterr().err  # a size the user chose is not announced


def test_profile_errors_are_one_paragraph(capsys):
    for argv, message in ((["--backbone", "nosuch"], "unknown backbone 'nosuch'"),
                          (["--backbone-args", "3"], "--backbone-args must be a YAML mapping"),
                          (["--batch-size", "0"], "--batch-size must be >= 1")):
        with pytest.raises(SystemExit) as stop:
            run_cli(lambda argv=argv: profile_main(argv))
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and "Traceback" not in err


def test_profile_tool_script_has_no_traceback():
    done = subprocess.run([sys.executable, str(ROOT / "tools/profile_model.py"), "--backbone", "nosuch"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr and "resnet50" in done.stderr


def test_profile_detector_and_backbone_args_match_count(capsys):
    from visattn.models.detector import build_detector

    profile_main(["--task", "detect", "--backbone", "csp_n", "--attn", "eca", "--img-size", "64",
                  "--num-classes", "3", "--repeats", "1", "--warmup", "0"])
    detector = build_detector("csp_n", attn="eca", num_classes=3, img_size=64)
    expected = visattn.count(detector, input_size=(1, 3, 64, 64))
    assert f"{expected.params:,} params" in capsys.readouterr().out
    profile_main(["--backbone", "resnet18", "--img-size", "32", "--num-classes", "10", "--backbone-args",
                  "{base_width: 8}", "--repeats", "1", "--warmup", "0"])
    half = visattn.build_model("resnet18", num_classes=10, backbone_args={"base_width": 8})
    assert f"{visattn.count(half, input_size=(1, 3, 32, 32)).params:,} params" in capsys.readouterr().out


def test_quiet_lightning_drops_the_tip_and_the_leafspec_warning(tmp_path, caplog):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities._pytree import _tree_flatten

    quiet_lightning()
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        L.Trainer(logger=CSVLogger(tmp_path), accelerator="cpu", enable_progress_bar=False,
                  default_root_dir=tmp_path)
    assert caplog.records and not [r for r in caplog.records if "litlogger" in r.getMessage()]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default", FutureWarning)
        quiet_lightning()  # after the reset above: the filter goes back on top
        _tree_flatten(1)
    assert not [w for w in seen if "LeafSpec" in str(w.message)]


def test_wheel_ships_the_configs_and_the_command(tmp_path):
    """A non-editable build: the configs are inside the package, and the entry point is declared."""
    source = tmp_path / "src"  # pip builds in the source tree: a copy keeps build/ out of the checkout
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "runs", "build", "*.egg-info", "__pycache__", ".pytest_cache", "benchmarks", "tests"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(source)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    wheel = next(tmp_path.glob("visattn-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {f"visattn/configs/{k}.yaml" for k in packaged_configs()} <= names
    assert "visattn = visattn.cli.main:main" in entry_points
