"""Never lose a user's data, round two (issue 24): every finding of the second adversarial run, as the command a user
would type. Markers that cannot be faked or followed, config validation before anything is touched, finished runs
that stay final, outputs that never land on inputs, no hangs on FIFOs or alias bombs, clean one-paragraph failures.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from visattn.cli.main import main as visattn_main
from visattn.config import ConfigError, make_config
from visattn.rundir import RUN_MARKER, is_run_dir
from visattn.training import train

REPO = Path(__file__).resolve().parents[1]
TINY = {"data": "digits", "img_size": 16, "epochs": 1, "batch_size": 16, "limit": 48, "num_workers": 0,
        "backbone": "resnet18", "backbone_args": {"base_width": 4}, "warmup_epochs": 0.5, "accelerator": "cpu"}
TINY_FLAGS = ["--data", "digits", "--img-size", "16", "--epochs", "1", "--batch-size", "16", "--limit", "48",
              "--num-workers", "0", "--set", "backbone_args.base_width=4", "--accelerator", "cpu"]


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """``visattn ARGS`` in this process: (exit code, stdout, stderr). A user error must be one paragraph."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        visattn_main([str(a) for a in args])
    out, err = capsys.readouterr()
    code = int(info.value.code or 0)
    if code == 2:
        assert "Traceback" not in err, err
        lines = err.strip().splitlines()
        assert lines and lines[-1].startswith("visattn: error:"), err
        assert sum(line.startswith("visattn: error:") for line in lines) == 1, err
    return code, out, err


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry's bytes (a link: its target), the lock file included: "nothing changed" means byte for byte."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_file():
            found[key] = path.read_bytes()
        elif path.is_dir():
            found[key] = "dir"
    return found


def user_folder(root: Path, *, config: str | None = None) -> Path:
    folder = root / "thatfolder"
    folder.mkdir(parents=True)
    (folder / "thesis.txt").write_text("three years of work")
    if config is not None:
        (folder / "config.yaml").write_text(config)
    return folder


@pytest.fixture(scope="module")
def trained(tiny_run) -> Path:
    """One finished tiny run (1 epoch, AdamW): conftest's session run, trained with ``TINY``; tests copy it."""
    run_dir, _, values = tiny_run
    assert values == TINY, "conftest.TINY_RUN and this file's TINY must stay the same run"
    return run_dir


def copy_run(trained: Path, tmp_path: Path) -> Path:
    target = tmp_path / "runs" / "run"
    shutil.copytree(trained, target, symlinks=True)
    return target


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (instead of hanging the suite) if the body takes longer than ``seconds``; interrupts a blocked open()."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---- 1, 2: only a folder visattn can prove it made is overwritten ------------------------------------------------


@pytest.mark.parametrize("config", ["title: my thesis\nchapters: 5\n", "epochs: 3\n", "{}\n"])
def test_a_user_folder_with_its_own_config_yaml_is_not_a_run(tmp_path, capsys, config):
    victim = user_folder(tmp_path, config=config)
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "train", *TINY_FLAGS, "--out", tmp_path, "--name", "thatfolder", "--overwrite")
    assert code == 2 and "not made by visattn" in err and "thatfolder" in err
    assert snapshot(tmp_path) == before
    code, _, err = run(capsys, "train", *TINY_FLAGS, "--out", tmp_path, "--name", "thatfolder", "--resume")
    assert code == 2 and snapshot(tmp_path) == before
    assert not is_run_dir(victim)


def test_a_folder_with_only_a_stray_lock_is_not_a_run(tmp_path, capsys):
    victim = user_folder(tmp_path)
    (victim / ".lock").write_text("")
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "train", *TINY_FLAGS, "--out", tmp_path, "--name", "thatfolder", "--overwrite")
    assert code == 2 and "not made by visattn" in err
    assert snapshot(tmp_path) == before


def test_a_fake_or_copied_marker_proves_nothing(tmp_path, capsys, trained):
    victim = user_folder(tmp_path)
    (victim / RUN_MARKER).write_text("made by visattn\n")  # the old marker text, typed by hand
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "train", *TINY_FLAGS, "--out", tmp_path, "--name", "thatfolder", "--overwrite")
    assert code == 2 and "not made by visattn" in err and snapshot(tmp_path) == before
    values = yaml.safe_load((trained / "config.yaml").read_text())
    other = user_folder(tmp_path / "second", config=yaml.safe_dump({**values, "run_id": "0" * 32}))
    shutil.copy(trained / RUN_MARKER, other / RUN_MARKER)  # a real marker beside a config.yaml that is not its run's
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "train", *TINY_FLAGS, "--out", other.parent, "--name", "thatfolder", "--overwrite")
    assert code == 2 and "not made by visattn" in err and snapshot(tmp_path) == before


def test_the_marker_holds_a_random_id_that_config_yaml_records(trained):
    marker = json.loads((trained / RUN_MARKER).read_text())
    config = yaml.safe_load((trained / "config.yaml").read_text())
    assert len(marker["id"]) >= 32 and config["run_id"] == marker["id"]
    assert is_run_dir(trained)


def test_a_legacy_run_counts_only_if_its_config_is_a_train_config(tmp_path, capsys, trained):
    """A run made before the id existed: old marker text, config.yaml without run_id. It may be overwritten."""
    legacy = copy_run(trained, tmp_path)
    (legacy / RUN_MARKER).write_text("made by visattn (pid 1 on host, 2024-01-01 00:00:00); only visattn deletes "
                                     "this folder\n")
    values = yaml.safe_load((legacy / "config.yaml").read_text())
    del values["run_id"]
    (legacy / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    assert is_run_dir(legacy)
    (legacy / RUN_MARKER).unlink()  # a run made before the marker existed: config.yaml alone
    assert is_run_dir(legacy)
    code, _, err = run(capsys, "train", *TINY_FLAGS, "--out", legacy.parent, "--name", "run", "--overwrite")
    assert code == 0, err
    marker = json.loads((legacy / RUN_MARKER).read_text())
    assert yaml.safe_load((legacy / "config.yaml").read_text())["run_id"] == marker["id"]


# ---- 3: markers, locks, checkpoints, logs and metrics are never followed through links ---------------------------


def test_a_symlinked_lock_is_never_followed(tmp_path, capsys, trained):
    precious = tmp_path / "precious.txt"
    precious.write_text("do not truncate me")
    run_dir = copy_run(trained, tmp_path)
    (run_dir / ".lock").unlink(missing_ok=True)
    (run_dir / ".lock").symlink_to(precious)
    for flags in (["--resume", run_dir, "--epochs", "2"], ["--resume", run_dir],
                  [*TINY_FLAGS, "--out", run_dir.parent, "--name", "run", "--overwrite"]):
        before = snapshot(run_dir)
        code, _, err = run(capsys, "train", *flags)
        assert code == 2 and "symbolic link" in err and ".lock" in err
        assert precious.read_text() == "do not truncate me" and snapshot(run_dir) == before


def test_a_symlinked_marker_is_never_followed_or_written(tmp_path, capsys):
    precious = tmp_path / "precious.txt"
    precious.write_text("my notes")
    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    (folder / RUN_MARKER).symlink_to(precious)
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, "train", *TINY_FLAGS, "--out", folder.parent, "--name", "r", *extra)
        assert code == 2 and RUN_MARKER in err
        assert precious.read_text() == "my notes" and sorted(p.name for p in folder.iterdir()) == [RUN_MARKER]


@pytest.mark.parametrize("link", ["checkpoints", "logs", "metrics.json", "logs/metrics.csv"])
def test_links_inside_a_run_are_refused_before_a_resume_writes_through_them(tmp_path, capsys, trained, link):
    victim = user_folder(tmp_path / "user")
    run_dir = copy_run(trained, tmp_path)
    target = run_dir / link
    if target.is_dir():
        shutil.rmtree(target)
        target.symlink_to(victim, target_is_directory=True)
    else:
        target.unlink()
        target.symlink_to(victim / "thesis.txt")
    before, user_before = snapshot(run_dir), snapshot(victim)
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "2")
    assert code == 2 and "symbolic link" in err and link.split("/")[-1] in err
    assert snapshot(run_dir) == before and snapshot(victim) == user_before


# ---- 4: the whole config is validated before anything is touched ------------------------------------------------


BAD_VALUES = [
    (["--lr", "nan"], "lr"),
    (["--lr", "inf"], "lr"),
    (["--weight-decay", "nan"], "weight_decay"),
    (["--label-smoothing", "5"], "label_smoothing"),
    (["--set", "momentum=-5"], "momentum"),
    (["--warmup-epochs", "-3"], "warmup_epochs"),
    (["--early-stopping", "-1"], "early_stopping"),
    (["--early-stopping", "0"], "early_stopping"),
    (["--batch-size", "1"], "BatchNorm"),
    (["--set", "visualize_every=0"], "visualize_every"),
]


@pytest.mark.parametrize(("flags", "named"), BAD_VALUES)
def test_overwrite_with_a_bad_value_keeps_the_old_run(tmp_path, capsys, trained, flags, named):
    run_dir = copy_run(trained, tmp_path)
    before = snapshot(run_dir)
    code, _, err = run(capsys, "train", *TINY_FLAGS, "--out", run_dir.parent, "--name", "run", "--overwrite", *flags)
    assert code == 2 and named in err.strip().splitlines()[-1], err
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(("values", "named"), [
    ({"lr": float("nan")}, "lr"), ({"weight_decay": float("inf")}, "weight_decay"),
    ({"momentum": 1.0}, "momentum"), ({"label_smoothing": -0.1}, "label_smoothing"),
    ({"warmup_epochs": float("nan")}, "warmup_epochs"), ({"early_stopping": 0}, "early_stopping"),
    ({"limit": 0}, "limit"), ({"num_workers": -1}, "num_workers"), ({"seed": -1}, "seed"),
])
def test_every_numeric_key_has_a_finite_range_check(values, named):
    with pytest.raises(ConfigError, match=named):
        make_config({}, values)


def test_batch_of_one_with_batchnorm_is_named(tmp_path, capsys):
    code, _, err = run(capsys, "train", *TINY_FLAGS, "--batch-size", "1", "--out", tmp_path, "--name", "b1")
    assert code == 2 and "BatchNorm" in err and "batch_size" in err and "at least 2" in err
    assert not (tmp_path / "b1").exists()


# ---- 5: a finished run is final -----------------------------------------------------------------------------------


def test_resume_of_a_finished_run_changes_nothing_and_says_so(tmp_path, capsys, trained):
    run_dir = copy_run(trained, tmp_path)
    before = snapshot(run_dir)
    time.sleep(0.01)
    code, out, err = run(capsys, "train", "--resume", run_dir)
    assert code == 0, err
    assert "finished" in out + err and "--epochs" in out + err
    assert snapshot(run_dir) == before
    code, out, err = run(capsys, "train", "--resume", run_dir, "--epochs", "1")
    assert code == 0 and "finished" in out + err and snapshot(run_dir) == before


def test_resume_with_more_epochs_adds_up_time_and_throughput(tmp_path, capsys, trained):
    run_dir = copy_run(trained, tmp_path)
    first = json.loads((run_dir / "metrics.json").read_text())
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "2")
    assert code == 0, err
    second = json.loads((run_dir / "metrics.json").read_text())
    assert second["epochs_run"] == 2 and second["train_time_s"] > first["train_time_s"]
    assert second["throughput_img_s"] is not None and second["precision"] == first["precision"]


KILL_AFTER_FIT = """
import json, os, signal, sys, time
import lightning as L
import visattn.training as vt
from visattn.cli.main import run_cli
from visattn.cli.train import main as train_main

build = vt.build_trainer

class KillAfterFit(L.Callback):
    def on_fit_start(self, trainer, module):
        self.start = time.perf_counter()
    def on_fit_end(self, trainer, module):
        with open({record!r}, "w") as handle:
            json.dump({{"fit_seconds": time.perf_counter() - self.start}}, handle)
        os.kill(os.getpid(), signal.SIGKILL)

def with_kill(*args, **kwargs):
    trainer, throughput = build(*args, **kwargs)
    trainer.callbacks.append(KillAfterFit())
    return trainer, throughput

vt.build_trainer = with_kill
sys.argv = ["tools/train.py", *{argv!r}]
run_cli(train_main)
"""


def test_sigkill_just_after_fit_then_resume_writes_only_measured_metrics(tmp_path, capsys):
    record = tmp_path / "killed.json"
    flags = [*TINY_FLAGS, "--epochs", "2", "--out", str(tmp_path), "--name", "k"]
    script = KILL_AFTER_FIT.format(record=str(record), argv=flags)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_dir = tmp_path / "k"
    assert not (run_dir / "metrics.json").exists()
    killed_part = json.loads(record.read_text())["fit_seconds"]
    code, _, err = run(capsys, "train", "--resume", run_dir)
    assert code == 0, err
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["resumed"] is True and metrics["epochs_run"] == 2
    assert metrics["throughput_img_s"] is not None and metrics["precision"] is not None
    assert metrics["data_wait_frac"] is not None and metrics["train_gflops_s"] is not None
    assert metrics["train_time_s"] >= 0.8 * killed_part, (metrics["train_time_s"], killed_part)


# ---- names --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["~", "~user", "-rf", "a\nb", "tab\there", "bell\x07", "a b", "semi;colon", "q?",
                                  "star*", "back\\slash", "x\x7f"])
def test_a_name_is_letters_digits_and_a_few_signs(name):
    with pytest.raises(ConfigError, match="name"):
        make_config({}, {"name": name})
    from visattn.sweep import make_spec

    with pytest.raises(ConfigError, match="name"):
        make_spec({"backbone": "resnet18", "attn": ["none"], "seeds": [0], "name": name}, {})


@pytest.mark.parametrize("name", ["run.1", "a-b_c", "r18@input+se=2", "café", "Run2"])
def test_ordinary_names_are_accepted(name):
    assert make_config({}, {"name": name}).run_name() == name


def test_names_from_the_command_line_are_checked_before_anything_is_made(tmp_path, capsys):
    code, _, err = run(capsys, "train", *TINY_FLAGS, "--out", tmp_path / "runs", "--name", "~")
    assert code == 2 and "name" in err and not (tmp_path / "runs").exists()
    code, _, err = run(capsys, "sweep", "--attn", "none", "--epochs", "1", "--limit", "32", "--img-size", "16",
                       "--out", tmp_path / "sweeps", "--name", "bad\nname")
    assert code == 2 and "name" in err and not (tmp_path / "sweeps").exists()


# ---- sweeps: a lookalike sweep.json proves nothing ----------------------------------------------------------------


def test_a_lookalike_sweep_json_is_neither_adopted_nor_emptied(tmp_path, capsys):
    victim = user_folder(tmp_path)
    (victim / "sweep.json").write_text(json.dumps({"format": 1, "spec": {}, "runs": []}))
    before = snapshot(tmp_path)
    sweep = ["sweep", "--attn", "none", "--epochs", "1", "--limit", "32", "--img-size", "16", "--num-workers", "0",
             "--out", tmp_path, "--name", "thatfolder"]
    code, _, err = run(capsys, *sweep)
    assert code == 2 and "not a visattn sweep" in err and snapshot(tmp_path) == before
    code, _, err = run(capsys, *sweep, "--overwrite")
    assert code == 2 and snapshot(tmp_path) == before


def test_a_symlinked_sweep_marker_is_refused(tmp_path):
    from visattn.sweep.run import MARKER, claim_sweep_dir

    precious = tmp_path / "precious.txt"
    precious.write_text("mine")
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / MARKER).symlink_to(precious)
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="symbolic link"), claim_sweep_dir(folder, overwrite=overwrite):
            pass
    assert precious.read_text() == "mine" and sorted(p.name for p in folder.iterdir()) == [MARKER]


# ---- 6: only regular files are read: a FIFO never hangs -----------------------------------------------------------


def png(path: Path, size: int = 24, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def yolo_root(root: Path) -> Path:
    for split in ("train", "val"):
        png(root / "images" / split / "x.png")
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    return root


def test_a_fifo_named_png_never_hangs_the_readers(tmp_path):
    from visattn.data.detect.readers import read_yolo
    from visattn.data.folders import load_image_folder
    from visattn.predict import list_images
    from visattn.visualize import read_image_folder

    root = yolo_root(tmp_path / "yolo")
    os.mkfifo(root / "images" / "train" / "pipe.png")
    (root / "classes.txt").write_text("a\n")
    folder = tmp_path / "folder"
    for c in ("a", "b"):
        for i in range(3):
            png(folder / c / f"{i}.png", seed=i)
    os.mkfifo(folder / "a" / "pipe.png")
    with deadline(60):
        source = read_yolo(root)
        assert [r.path.name for r in source.splits["train"]] == ["x.png"]
        assert all(p.name != "pipe.png" for s in load_image_folder(data_dir=folder).splits.values() for p in s.paths)
        assert [p.name for p in list_images(folder / "a")] == ["0.png", "1.png", "2.png"]
        images, names = read_image_folder(folder / "a", size=16, n=8)
        assert names == ["0.png", "1.png", "2.png"] and images.shape == (3, 16, 16, 3)


def test_a_fifo_image_never_hangs_predict(tmp_path, classify_export):
    photos = tmp_path / "photos"
    png(photos / "0.png")
    os.mkfifo(photos / "pipe.png")
    proc = subprocess.run([sys.executable, "-m", "visattn", "predict", "--model", str(classify_export / "model.onnx"),
                           "--images", str(photos)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "0.png" in proc.stdout and "pipe.png" not in proc.stdout


# ---- 7: outputs never land on inputs ------------------------------------------------------------------------------


def static_export(folder: Path, *, num_classes: int = 3) -> Path:
    """A tiny untrained classifier exported as the default does (static batch 1): model.onnx + model.json."""
    from visattn.export import ModelSpec, export_model

    spec = ModelSpec(task="classify", backbone="resnet18", attn=None, img_size=32, backbone_args={"base_width": 4},
                     num_classes=num_classes, in_chans=3, class_names=[f"c{i}" for i in range(num_classes)],
                     mean=[0.5] * 3, std=[0.25] * 3)
    torch.manual_seed(0)
    folder.mkdir(parents=True)
    export_model(spec.build().eval(), spec, folder, formats=["onnx", "safetensors"], dynamic_batch=False)
    return folder


@pytest.fixture(scope="module")
def classify_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return static_export(tmp_path_factory.mktemp("export") / "export")


@pytest.fixture
def fake_detector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A detection 'export' whose ONNX session is a stand-in (a real detector export costs ~50 s here)."""
    import onnxruntime

    class Session:
        def __init__(self, path: str, providers: object = None) -> None:
            pass

        def get_inputs(self) -> list[object]:
            return [type("Input", (), {"name": "x", "shape": ["batch", 3, 32, 32]})()]

        def run(self, names: object, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            rows = [[i, 1.0, 1.0, 8.0, 8.0, 0.9, 0.0] for i in range(len(feed["x"]))]
            return np.zeros((len(rows), 10, 5), np.float32), np.array(rows, np.float32).reshape(-1, 7)

    folder = tmp_path / "detector"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"stand-in")
    (folder / "model.json").write_text(json.dumps({"task": "detect", "img_size": 32, "num_classes": 1,
                                                   "class_names": ["a"], "mean": [0.5] * 3, "std": [0.25] * 3}))
    monkeypatch.setattr(onnxruntime, "InferenceSession", Session)
    return folder / "model.onnx"


def grey16(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.linspace(0, 65535, 32 * 32).astype(np.uint16).reshape(32, 32)).save(path)
    return path


def test_predict_save_dir_on_or_around_the_images_is_refused(tmp_path, capsys, fake_detector):
    photos = tmp_path / "photos"
    grey16(photos / "a.png")
    grey16(photos / "sub" / "b.png")
    before = snapshot(photos)
    for save_dir in (photos, photos / "sub", photos / "new", tmp_path):
        code, out, err = run(capsys, "predict", "--model", fake_detector, "--images", photos, "--save-dir", save_dir)
        assert code == 2 and "--save-dir" in err and "--images" in err, err
        assert snapshot(photos) == before and out == ""
    code, out, err = run(capsys, "predict", "--model", fake_detector, "--images", photos / "sub", "--save-dir",
                         photos / "sub" / "drawn")
    assert code == 2 and snapshot(photos) == before


def test_predict_save_dir_never_overwrites_files_it_did_not_write(tmp_path, capsys, fake_detector):
    photos = tmp_path / "photos"
    grey16(photos / "a.png")
    mine = tmp_path / "mine"
    grey16(mine / "a.png")  # a user's own file, named as a drawing would be
    before = snapshot(mine)
    code, _, err = run(capsys, "predict", "--model", fake_detector, "--images", photos, "--save-dir", mine)
    assert code == 2 and "did not write" in err and snapshot(mine) == before
    fresh = tmp_path / "drawn"
    for _ in range(2):  # a folder predict made is its own: a second prediction may replace its drawings
        code, out, err = run(capsys, "predict", "--model", fake_detector, "--images", photos, "--save-dir", fresh)
        assert code == 0, err
        assert (fresh / "a.png").is_file()


def test_predict_out_never_replaces_an_input_or_a_foreign_file(tmp_path, capsys, classify_export):
    photos = tmp_path / "photos"
    image = grey16(photos / "a.png")
    before = snapshot(photos)
    model = classify_export / "model.onnx"
    for out in (image, photos / "preds.csv"):
        code, stdout, err = run(capsys, "predict", "--model", model, "--images", photos, "--out", out)
        assert code == 2 and "--images" in err and stdout == ""
        assert snapshot(photos) == before
    foreign = tmp_path / "notes.csv"
    foreign.write_text("my,own,table\n1,2,3\n")
    code, _, err = run(capsys, "predict", "--model", model, "--images", photos, "--out", foreign)
    assert code == 2 and "did not write" in err and foreign.read_text() == "my,own,table\n1,2,3\n"
    ours = tmp_path / "preds.csv"
    for _ in range(2):  # its own CSV may be replaced
        code, _, err = run(capsys, "predict", "--model", model, "--images", photos, "--out", ours)
        assert code == 0, err


def test_predict_out_with_a_trailing_slash_is_a_directory_error(tmp_path, capsys, classify_export):
    photos = tmp_path / "photos"
    grey16(photos / "a.png")
    code, _, err = run(capsys, "predict", "--model", classify_export / "model.onnx", "--images", photos, "--out",
                       f"{tmp_path / 'results'}/")
    assert code == 2 and "is a directory" in err
    assert not (tmp_path / "results").exists()


def test_visualize_out_never_overwrites_a_user_folder_or_lands_in_the_images(tmp_path, capsys, trained):
    photos = tmp_path / "photos"
    grey16(photos / "index.png")
    grey16(photos / "image_00.png")
    user = tmp_path / "user"
    grey16(user / "index.png")
    grey16(user / "image_00.png")
    before_photos, before_user = snapshot(photos), snapshot(user)
    for out in (user, photos, photos / "figs"):
        code, _, err = run(capsys, "visualize", "--run", trained, "--images", photos, "--n", "1", "--out", out)
        assert code == 2 and "--out" in err, err
    assert snapshot(photos) == before_photos and snapshot(user) == before_user
    fresh = tmp_path / "figs"
    for _ in range(2):
        code, out, err = run(capsys, "visualize", "--run", trained, "--images", photos, "--n", "1", "--out", fresh)
        assert code == 0, err
        assert (fresh / "index.png").is_file()


# ---- 8: export of one format keeps the others; tampered exports are one line each ---------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, trained: Path) -> Path:
    """A copy of the trained run exported twice: onnx, then safetensors alone."""
    from visattn.export import export_run

    run_dir = tmp_path_factory.mktemp("exported") / "run"
    shutil.copytree(trained, run_dir)
    export_run(run_dir, formats="onnx")
    export_run(run_dir, formats="safetensors")
    return run_dir


def test_export_of_one_format_keeps_the_others(exported):
    files = sorted(p.name for p in (exported / "export").iterdir())
    assert {"model.onnx", "model.safetensors", "model.json", "report.json"} <= set(files)
    report = json.loads((exported / "export" / "report.json").read_text())
    assert set(report["formats"]) == {"onnx", "safetensors"}


def test_an_export_of_another_checkpoint_says_what_it_replaced(tmp_path, exported, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(exported, run_dir)
    code, out, err = run(capsys, "export", "--run", run_dir, "--format", "safetensors", "--checkpoint", "last",
                         "--img-size", "32")
    assert code == 0, err
    assert "model.onnx" in out + err and "removed" in out + err
    assert not (run_dir / "export" / "model.onnx").exists()


def tamper(export: Path, how: str) -> None:
    if how == "classes":
        spec = json.loads((export / "model.json").read_text())
        (export / "model.json").write_text(json.dumps({**spec, "num_classes": spec["num_classes"] + 3}))
    elif how == "img_size":
        spec = json.loads((export / "model.json").read_text())
        (export / "model.json").write_text(json.dumps({**spec, "img_size": 32}))
    elif how == "swapped":
        from safetensors.torch import save_file

        import visattn

        other = visattn.build_model("resnet18", num_classes=7, backbone_args={"base_width": 8})
        save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(export / "model.safetensors"))
    elif how == "truncated":
        data = (export / "model.onnx").read_bytes()
        (export / "model.onnx").write_bytes(data[: len(data) // 3])
    elif how == "missing":
        (export / "model.onnx").unlink()
    elif how == "garbage_json":
        (export / "model.json").write_text("{not json")


@pytest.mark.parametrize(("how", "model", "named"), [
    ("classes", "export", "model.json"), ("img_size", "export", "report.json"), ("swapped", "export",
                                                                                 "model.safetensors"),
    ("truncated", "export/model.onnx", "model.onnx"), ("missing", "export/model.onnx", "model.onnx"),
    ("garbage_json", "export", "model.json"), ("img_size", "export/model.onnx", "report.json"),
])
def test_a_tampered_export_is_one_line(tmp_path, capsys, exported, how, model, named):
    run_dir = tmp_path / "run"
    shutil.copytree(exported, run_dir)
    tamper(run_dir / "export", how)
    photos = tmp_path / "photos"
    png(photos / "a.png")
    code, out, err = run(capsys, "predict", "--model", run_dir / model, "--images", photos)
    assert code == 2 and named in err and out == ""
    if model == "export":
        code, _, err = run(capsys, "evaluate", "--run", run_dir, "--export", run_dir / "export", "--limit", "8")
        assert code == 2 and named in err


def test_evaluate_with_an_export_of_another_task_names_the_mismatch(tmp_path, capsys, exported):
    detect_run = tmp_path / "detect-run"
    detect_run.mkdir()
    config = make_config({}, {"task": "detect", "backbone": "csp_n", "img_size": 64, "out": str(tmp_path),
                              "name": "detect-run"})
    (detect_run / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    code, _, err = run(capsys, "evaluate", "--run", detect_run, "--export", exported / "export")
    assert code == 2 and "classify" in err and "detect" in err and "task" in err


# ---- bounded memory: YAML aliases, class ids, pixel limit ---------------------------------------------------------


ALIAS_BOMB = """\
a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_a_yaml_alias_bomb_is_a_quick_clear_error(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("data_args:\n" + textwrap.indent(ALIAS_BOMB, "  "))
    start = time.perf_counter()
    with deadline(60):
        code, _, err = run(capsys, "train", "--config", bomb, *TINY_FLAGS, "--out", tmp_path / "runs")
    assert code == 2 and "alias" in err and str(bomb) in err
    assert time.perf_counter() - start < 20 and not (tmp_path / "runs").exists()
    root = yolo_root(tmp_path / "yolo")
    (root / "data.yaml").write_text("names: [a]\n" + ALIAS_BOMB)
    from visattn.data import DataError
    from visattn.data.detect.readers import read_yolo

    with deadline(60), pytest.raises(DataError, match="alias"):
        read_yolo(root)


def test_a_huge_yaml_file_is_refused(tmp_path, capsys):
    big = tmp_path / "big.yaml"
    big.write_text("backbone: resnet18\n# " + "x" * (5 << 20) + "\n")  # over the 4 MB limit
    code, _, err = run(capsys, "train", "--config", big, *TINY_FLAGS, "--out", tmp_path / "runs")
    assert code == 2 and "MB" in err and str(big) in err


def test_a_yolo_class_id_beyond_a_sane_bound_names_file_and_line(tmp_path):
    from visattn.data import DataError
    from visattn.data.detect.readers import read_yolo

    root = yolo_root(tmp_path / "yolo")
    (root / "labels" / "train" / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n99999999999 0.5 0.5 0.2 0.2\n")
    with deadline(60), pytest.raises(DataError, match=r"class id 99999999999 on line 2 of .*labels/train/x\.txt"):
        read_yolo(root)
    (root / "data.yaml").write_text("names: [a, b]\n")
    (root / "labels" / "train" / "x.txt").write_text("0 0.5 0.5 0.5 0.5\n2 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"class id 2 on line 2 of .*x\.txt.*data\.yaml"):
        read_yolo(root)


def test_max_image_pixels_is_enforced_below_pils_hard_limit(tmp_path, monkeypatch, classify_export, capsys):
    """PIL raises only above 2 x MAX_IMAGE_PIXELS and merely warns between 1x and 2x; the README promises the limit."""
    from visattn.data import DataError
    from visattn.data.detect.readers import read_yolo
    from visattn.data.folders import ImageFileDataset, load_image_folder

    folder = tmp_path / "folder"
    for c in ("a", "b"):
        for i in range(3):
            png(folder / c / f"{i}.png", size=16, seed=i)
    big = png(folder / "a" / "big.png", size=24)  # 576 pixels: over 500, under PIL's error at 1000
    root = yolo_root(tmp_path / "yolo")
    (root / "classes.txt").write_text("a\n")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(DataError, match=r"big\.png.*MAX_IMAGE_PIXELS"):
        load_image_folder(data_dir=folder)
    assert load_image_folder(data_dir=folder, skip_bad_images=True).skipped == [big]
    with pytest.raises(DataError, match=r"big\.png.*MAX_IMAGE_PIXELS"):
        ImageFileDataset([big], np.zeros(1)).raw(0)
    with pytest.raises(DataError, match=r"x\.png.*MAX_IMAGE_PIXELS"):
        read_yolo(root)
    code, _, err = run(capsys, "predict", "--model", classify_export / "model.onnx", "--images", folder / "a")
    assert code == 2 and "big.png" in err and "MAX_IMAGE_PIXELS" in err


# ---- images that fail only when decoded in full ------------------------------------------------------------------


def corrupt_png_data(path: Path) -> Path:
    """Flip bytes inside the IDAT stream and fix the chunk's CRC: every CRC is valid, the pixels cannot be decoded."""
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT")
    length = int.from_bytes(data[start - 4:start], "big")
    body = start + 4
    for k in range(8, min(length, 40)):
        data[body + k] ^= 0x5A
    crc = zlib.crc32(bytes(data[start:body + length])) & 0xFFFFFFFF
    data[body + length:body + length + 4] = crc.to_bytes(4, "big")
    path.write_bytes(bytes(data))
    with Image.open(path) as im:
        im.verify()  # the quick scan passes it
    with pytest.raises(Exception), Image.open(path) as im:  # noqa: B017, PT011 - PIL's own error type varies
        im.load()
    return path


def corrupt_folder(root: Path) -> Path:
    for c in ("a", "b"):
        for i in range(6):
            png(root / c / f"{i}.png", size=24, seed=10 * len(c) + i + (7 if c == "b" else 0))
    corrupt_png_data(root / "a" / "0.png")
    return root


def test_verify_images_full_finds_corrupt_pixel_data_up_front(tmp_path, capsys):
    root = corrupt_folder(tmp_path / "data")
    flags = ["--data", "imagefolder", "--data-dir", root, "--img-size", "16", "--epochs", "1", "--batch-size", "4",
             "--num-workers", "0", "--set", "backbone_args.base_width=4", "--out", tmp_path / "runs"]
    code, _, err = run(capsys, "train", *flags, "--name", "full", "--verify-images", "full")
    assert code == 2 and "0.png" in err and "--skip-bad-images" in err
    assert not (tmp_path / "runs" / "full").exists()
    from visattn.data.folders import load_image_folder

    assert load_image_folder(data_dir=root, verify_images="full", skip_bad_images=True).skipped == [root / "a" /
                                                                                                    "0.png"]


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_bad_images_also_covers_images_that_fail_mid_training(tmp_path, capsys, workers):
    root = corrupt_folder(tmp_path / "data")
    flags = ["--data", "imagefolder", "--data-dir", root, "--img-size", "16", "--epochs", "2", "--batch-size", "4",
             "--num-workers", str(workers), "--set", "backbone_args.base_width=4", "--out", tmp_path / "runs",
             "--name", "skip", "--skip-bad-images"]
    code, out, err = run(capsys, "train", *flags)
    assert code == 0, err
    metrics = json.loads((tmp_path / "runs" / "skip" / "metrics.json").read_text())
    assert metrics["skipped_images"] == 1 and metrics["epochs_run"] == 2
    assert "skipped 1" in out


# ---- clean failures -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", ["best.ckpt", "last.ckpt", "metrics.json"])
def test_a_full_disk_is_one_paragraph_naming_the_folder_and_leaves_no_tmp(tmp_path, capsys, monkeypatch, failing):
    import visattn.rundir as rundir

    real_open = rundir.open_tmp

    class FullDisk:
        def __init__(self, handle) -> None:
            self.handle, self.written = handle, 0

        def write(self, data) -> int:
            room = 100 - self.written  # the disk fills up 100 bytes into the file: a partial .tmp is left to remove
            if len(data) > room:
                self.handle.write(data[:max(room, 0)])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.written += len(data)
            return self.handle.write(data)

        def __getattr__(self, name: str):
            return getattr(self.handle, name)

    def full_when(path: Path, final: Path):
        handle = real_open(path, final)
        return FullDisk(handle) if final.name == failing else handle

    monkeypatch.setattr(rundir, "open_tmp", full_when)
    code, _, err = run(capsys, "train", *TINY_FLAGS, "--out", tmp_path, "--name", "full")
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert "No space left on device" in last and str(tmp_path / "full") in last and failing in last
    assert not [p for p in (tmp_path / "full").rglob("*") if p.name.endswith(".tmp")]


def test_a_closed_stdout_works(tmp_path):
    argv = " ".join(f"'{a}'" for a in ["--out", str(tmp_path), "--name", "closed", *TINY_FLAGS])
    proc = subprocess.run(["bash", "-c", f"exec {sys.executable} -m visattn train {argv} >&-"], cwd=REPO,
                          stderr=subprocess.PIPE, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    metrics = json.loads((tmp_path / "closed" / "metrics.json").read_text())
    assert metrics["test"]["acc"] is not None


@pytest.fixture(scope="module")
def sgd_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sgd")
    train(make_config({}, {**TINY, "out": str(out), "name": "sgd", "optimizer": "sgd"}))
    return out / "sgd" / "checkpoints" / "last.ckpt"


def test_a_checkpoint_of_another_optimiser_names_the_file_and_changes_nothing(tmp_path, capsys, trained,
                                                                            sgd_checkpoint):
    run_dir = copy_run(trained, tmp_path)
    last = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    state["optimizer_states"] = torch.load(sgd_checkpoint, weights_only=True)["optimizer_states"]
    state["epoch"] = 0  # an unfinished run, so the resume really has to load it
    torch.save(state, last)
    (run_dir / "metrics.json").unlink()
    before = snapshot(run_dir)
    code, _, err = run(capsys, "train", "--resume", run_dir, "--epochs", "2")
    assert code == 2 and str(last) in err and "optimi" in err
    assert snapshot(run_dir) == before


KILL_WITH_WORKERS = """
import json, os, signal, sys
import lightning as L
import visattn.training as vt
from visattn.cli.main import run_cli
from visattn.cli.train import main as train_main

build = vt.build_trainer

class Kill(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.current_epoch == 1 and trainer.global_step >= {step}:
            workers = [child.pid for child in __import__("multiprocessing").active_children()]
            with open({record!r}, "w") as handle:
                json.dump(workers, handle)
            for pid in workers:  # frozen: torch's watchdog would end them within 5 s; this way they outlive the test
                os.kill(pid, signal.SIGSTOP)
            os.kill(os.getpid(), signal.SIGKILL)

def with_kill(*args, **kwargs):
    trainer, throughput = build(*args, **kwargs)
    trainer.callbacks.append(Kill())
    return trainer, throughput

vt.build_trainer = with_kill
sys.argv = ["tools/train.py", *{argv!r}]
run_cli(train_main)
"""


def test_a_dead_trainers_lock_is_free_at_once_although_its_loader_workers_live(tmp_path, capsys):
    flags = [*TINY_FLAGS, "--epochs", "3", "--num-workers", "2", "--limit", "32", "--batch-size", "8",
             "--precision", "32", "--out", str(tmp_path), "--name", "w"]
    record = tmp_path / "workers.json"
    script = KILL_WITH_WORKERS.format(step=5, argv=flags, record=str(record))
    with open(tmp_path / "log.txt", "w") as log:  # not a pipe: the orphans would hold it open, and we would wait
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, stdout=log, stderr=log)
        assert proc.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-2000:]
    run_dir = tmp_path / "w"
    orphans = json.loads(record.read_text())
    try:
        assert (run_dir / "checkpoints" / "last.ckpt").is_file() and orphans
        assert all(Path(f"/proc/{pid}").exists() for pid in orphans)  # the orphaned loader workers live on
        code, _, err = run(capsys, "train", "--resume", run_dir)
        assert code == 0, err
        assert json.loads((run_dir / "metrics.json").read_text())["epochs_run"] == 3
    finally:
        for pid in orphans:  # the workers this test's trainer started, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
