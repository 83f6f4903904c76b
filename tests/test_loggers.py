"""``--logger csv|tensorboard|mlflow|wandb`` (issue 23, "Loggers"): csv always on, the others through Lightning's
loggers, each needing its extra. TensorBoard is installed by ``[dev]`` and tested by a real run; mlflow and wandb
are not installed here, so only their missing-extra path is tested (blocked as in tests/test_extras.py).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_RUN

from visattn.commands import main
from visattn.config import LOGGERS, ConfigError, logger_names, make_config, require_loggers
from visattn.extras import EXTRAS, MissingExtraError
from visattn.rundir import read_run_config

ROOT = Path(__file__).resolve().parents[1]


def tiny_argv(out: Path, name: str) -> list[str]:
    """conftest's TINY_RUN as ``visattn train`` flags."""
    run = TINY_RUN
    return ["train", "--backbone", run["backbone"], "--data", run["data"], "--img-size", str(run["img_size"]),
            "--epochs", str(run["epochs"]), "--batch-size", str(run["batch_size"]), "--limit", str(run["limit"]),
            "--num-workers", str(run["num_workers"]), "--warmup-epochs", str(run["warmup_epochs"]),
            "--accelerator", run["accelerator"], "--out", str(out), "--name", name,
            "--set", f"backbone_args.base_width={run['backbone_args']['base_width']}"]


def run_command(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def event_tags(folder: Path) -> tuple[set[str], set[str]]:
    """Scalar and image tags of the TensorBoard event files in ``folder``, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    return set(tags["scalars"]), set(tags["images"])


def saved_logger(run_dir: Path) -> list[str]:
    return yaml.safe_load((run_dir / "config.yaml").read_text())["logger"]


def test_default_run_logs_csv_only(tiny_run):
    run_dir, _, _ = tiny_run
    assert (run_dir / "logs" / "metrics.csv").is_file()
    assert not (run_dir / "tb").exists()  # tensorboard is installed here: only --logger tensorboard turns it on
    assert saved_logger(run_dir) == ["csv"]


def test_tensorboard_logger_writes_events_beside_the_csv(tmp_path, capsys):
    code, out, err = run_command([*tiny_argv(tmp_path, "tb"), "--logger", "tensorboard", "--visualize-every", "1"],
                                 capsys)
    assert code == 0, err
    run_dir = tmp_path / "tb"
    assert saved_logger(run_dir) == ["csv", "tensorboard"]  # config.yaml records what the run logged to
    assert (run_dir / "logs" / "metrics.csv").is_file() and (run_dir / "results.png").is_file()
    events = sorted((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events and all(p.stat().st_size > 0 for p in events)
    scalars, images = event_tags(run_dir / "tb")
    assert {"train/loss_epoch", "val/acc", "test/acc"} <= scalars, scalars
    assert any(tag.startswith("attention/") for tag in images), images  # --visualize-every's figures, too


def test_logger_may_change_on_resume(tiny_run, tmp_path, capsys):
    source, _, _ = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    code, _, err = run_command(["train", "--resume", str(run_dir), "--epochs", "2", "--logger", "tensorboard"],
                               capsys)
    assert code == 0, err
    assert "with logger ['csv'] -> ['csv', 'tensorboard']" in err
    assert saved_logger(run_dir) == ["csv", "tensorboard"]
    assert (run_dir / "logs" / "metrics.part0.csv").is_file() and (run_dir / "logs" / "metrics.csv").is_file()
    scalars, _ = event_tags(run_dir / "tb")
    assert "val/acc" in scalars


def test_a_run_saved_before_the_key_logged_csv(tiny_run, tmp_path):
    source, _, _ = tiny_run
    values = yaml.safe_load((source / "config.yaml").read_text())
    del values["logger"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(values))
    assert read_run_config(tmp_path).logger == ["csv"]  # so a resume without --logger changes nothing


@pytest.mark.parametrize(("given", "names"), [("csv", ["csv"]), ("tensorboard", ["csv", "tensorboard"]),
                                              ("wandb, mlflow,csv", ["csv", "wandb", "mlflow"]),
                                              (["tensorboard", "tensorboard"], ["csv", "tensorboard"]),
                                              ("tensorboard,", ["csv", "tensorboard"])])
def test_logger_names(given, names):
    assert logger_names(given) == names
    assert make_config({}, {"logger": given}).logger == names


@pytest.mark.parametrize(("given", "match"), [
    ("tensorbord", r"unknown logger 'tensorbord'\. Did you mean 'tensorboard'\? Valid loggers: csv, tensorboard, "
                   r"mlflow, wandb"),
    (["csv", "neptune"], r"unknown logger 'neptune'\. Valid loggers: csv, tensorboard, mlflow, wandb"),
    (5, r"config key 'logger' must be a list or a string, got 5"),
])
def test_unknown_logger_is_a_config_error(given, match):
    with pytest.raises(ConfigError, match=match):
        make_config({}, {"logger": given})


def test_unknown_logger_on_the_command_line(tmp_path, capsys):
    code, _, err = run_command([*tiny_argv(tmp_path / "runs", "x"), "--logger", "csv,wandbb"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "unknown logger 'wandbb'. Did you mean 'wandb'?" in err and "csv is always on" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("module", ["tensorboard", "mlflow", "wandb"])
def test_missing_logger_package_is_one_paragraph_and_changes_nothing(tmp_path, monkeypatch, capsys, module):
    monkeypatch.setitem(sys.modules, module, None)  # as on a machine without it (mlflow, wandb: not installed here)
    code, _, err = run_command([*tiny_argv(tmp_path / "runs", "x"), "--logger", f"csv,{module}"], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"--logger {module} needs the Python package '{module}'" in lines[0]
    assert f"pip install 'visattn[{module}]'" in lines[0]
    assert not (tmp_path / "runs").exists()  # refused before --out or the run directory was made


def test_missing_logger_package_stops_a_sweep_before_its_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)
    code, _, err = run_command(["sweep", "--backbone", "resnet18", "--attn", "none,se", "--epochs", "1", "--limit",
                                "16", "--out", str(tmp_path / "sweeps"), "--set", "logger=wandb"], capsys)
    assert code == 2 and "pip install 'visattn[wandb]'" in err and "Traceback" not in err
    assert not (tmp_path / "sweeps").exists()


def test_mlflow_is_told_not_to_send_telemetry(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "placeholder")
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY")  # recorded by monkeypatch, so the variable is restored after
    monkeypatch.setitem(sys.modules, "mlflow", None)
    assert make_config({}, {"logger": "mlflow"}).logger == ["csv", "mlflow"]  # validating a name needs no package
    with pytest.raises(MissingExtraError, match=r"pip install 'visattn\[mlflow\]'"):
        require_loggers("mlflow")  # what train and sweep call before they claim a directory
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"  # set before mlflow's first import


def test_help_lists_the_loggers(capsys):
    code, out, _ = run_command(["train", "--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    assert "--logger NAMES" in text and "csv, tensorboard, mlflow, wandb" in text
    assert "always on" in text and "'tensorboard' means csv+tensorboard" in text


def test_extras_of_the_loggers_exist_in_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for module, (_, extra) in EXTRAS.items():
        assert extra is None or extra in extras, f"EXTRAS names [{extra}] for {module}, which pyproject lacks"
    for name in LOGGERS[1:]:
        assert any(dep.startswith(name) for dep in extras[name]), extras[name]
    assert any(dep.startswith("tensorboard") for dep in extras["dev"])  # so the suite tests it
    pins = (ROOT / "constraints.txt").read_text().split()
    assert any(pin.startswith("tensorboard==") for pin in pins)
