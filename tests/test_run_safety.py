"""Run directories only visattn may delete, all-or-nothing resume, locks, safe loading, non-finite losses,
bad --out and config values (issue 13). Every case is also a command a user could type."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from visattn.cli.main import run_cli
from visattn.cli.train import config_from_args, train_parser
from visattn.cli.train import main as train_main
from visattn.config import ConfigError, make_config
from visattn.errors import USER_ERRORS
from visattn.rundir import ERROR_FILE, RUN_MARKER, DirLock, create_marker, save_config, write_json_atomic
from visattn.training import prepare

REPO = Path(__file__).resolve().parents[1]
TINY = {"data": "digits", "img_size": 16, "epochs": 1, "batch_size": 16, "limit": 48, "num_workers": 0,
        "backbone": "resnet18", "backbone_args": {"base_width": 4}, "warmup_epochs": 0.5, "accelerator": "cpu"}
TINY_FLAGS = ["--data", "digits", "--img-size", "16", "--epochs", "1", "--batch-size", "16", "--limit", "48",
              "--num-workers", "0", "--set", "backbone_args.base_width=4", "--accelerator", "cpu"]


def tiny(out: Path, **overrides):
    return make_config({}, {**TINY, "out": str(out), **overrides})


def cli(args: list[str], capsys) -> tuple[int, str]:
    """``tools/train.py ARGS`` in this process: (exit code, stderr). A non-user error propagates (a bug)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: train_main([str(a) for a in args]))
    err = capsys.readouterr().err
    if info.value.code == 2:
        assert err.strip().splitlines()[-1].startswith("visattn: error:") and "Traceback" not in err
        assert len([line for line in err.splitlines() if line.startswith("visattn: error:")]) == 1
    return info.value.code, err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes (the lock file's content changes with each holder and is left out)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def fake_run(folder: Path, *, config: bool = True) -> Path:
    """A run directory as training leaves it after a kill (no training needed)."""
    folder.mkdir(parents=True)
    run_id = create_marker(folder, RUN_MARKER, made_by="visattn train")
    if config:
        save_config(tiny(folder.parent, name=folder.name, run_id=run_id), folder / "config.yaml")
    (folder / "logs").mkdir()
    (folder / "logs" / "notes.txt").write_text("my notes")
    return folder


@pytest.fixture(scope="module")
def trained(tiny_run) -> Path:
    """One finished tiny run (1 epoch, AdamW): conftest's session run, trained with ``TINY``; tests copy it."""
    run_dir, _, values = tiny_run
    assert values == TINY, "conftest.TINY_RUN and this file's TINY must stay the same run"
    return run_dir


def copy_run(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "run"
    shutil.copytree(trained, run)
    return run


# ---- names and --overwrite ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", "/some/dir", "a/b", "../x", ""])
def test_run_name_is_one_path_component(name):
    with pytest.raises(ConfigError, match="name"):
        make_config({}, {"name": name})


def test_overwrite_commands_from_the_issue_delete_nothing(tmp_path, capsys):
    victim = tmp_path / "some" / "dir"
    (victim / "docs").mkdir(parents=True)
    (victim / "docs" / "thesis.txt").write_text("three years")
    before = snapshot(tmp_path)
    code, err = cli(["--name", victim, "--overwrite", "--backbone", "nosuch", "--out", tmp_path / "runs"], capsys)
    assert code == 2 and "single folder name" in err
    code, err = cli(["--out", victim / "docs", "--name", "..", "--overwrite"], capsys)
    assert code == 2 and "single folder name" in err
    code, err = cli(["--out", tmp_path / "some", "--name", "dir", "--overwrite", "--backbone", "nosuch"], capsys)
    assert code == 2 and "not made by visattn" in err and "not deleted" in err
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["some"]
    assert not (victim / ".lock").exists() and not (victim / RUN_MARKER).exists()


def test_overwrite_keeps_the_old_run_when_the_new_set_up_fails(tmp_path, capsys):
    run = fake_run(tmp_path / "runs" / "r")
    before = snapshot(run)
    code, err = cli(["--out", tmp_path / "runs", "--name", "r", "--overwrite", "--backbone", "nosuch"], capsys)
    assert code == 2 and "nosuch" in err
    assert snapshot(run) == before


def test_overwrite_replaces_a_run_killed_before_its_config(tmp_path):
    run = tmp_path / "r"  # killed while writing config.yaml: a marker and half a temporary file, nothing else
    run.mkdir()
    create_marker(run, RUN_MARKER, made_by="visattn train")
    (run / ".config.yaml.tmp").write_text("task: clas")
    prepared = prepare(tiny(tmp_path, name="r", overwrite=True))
    try:
        assert not (run / ".config.yaml.tmp").exists()
        assert (run / "config.yaml").is_file() and (run / RUN_MARKER).is_file()
    finally:
        prepared.lock.release()
    other = fake_run(tmp_path / "other", config=False)  # a marker beside other files, but no config.yaml: unproven
    with pytest.raises(ConfigError, match="not made by visattn"):
        prepare(tiny(tmp_path, name="other", overwrite=True))
    assert (other / "logs" / "notes.txt").read_text() == "my notes"


def test_second_training_in_a_live_run_dir_is_refused_with_the_holder(tmp_path):
    first = prepare(tiny(tmp_path, name="r", seed=1))
    try:
        before = snapshot(tmp_path / "r")
        for overrides in ({"overwrite": True}, {}, {"resume": True}):
            with pytest.raises(ConfigError, match=f"in use by process {os.getpid()} on {socket.gethostname()}"):
                prepare(tiny(tmp_path, name="r", seed=2, **overrides))
        assert snapshot(tmp_path / "r") == before
    finally:
        first.lock.release()


def test_lock_goes_away_with_a_killed_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom visattn.rundir import DirLock\n"
         "lock = DirLock(sys.argv[1]).acquire()\nprint('held', flush=True)\ntime.sleep(120)\n", str(tmp_path)],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"in use by process {holder.pid} on {socket.gethostname()}"):
            DirLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    DirLock(tmp_path).acquire().release()  # the dead holder's record is in the file, the lock is not


def test_lock_without_flock_trusts_only_a_live_pid(tmp_path, monkeypatch):
    import fcntl

    def no_flock(*args):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    host = socket.gethostname()
    (tmp_path / ".lock").write_text(json.dumps({"pid": 2**22 + 12345, "host": host}))  # no such process
    lock = DirLock(tmp_path).acquire()
    lock.release()
    (tmp_path / ".lock").write_text(json.dumps({"pid": os.getppid(), "host": host}))
    with pytest.raises(ConfigError, match=f"in use by process {os.getppid()}"):
        DirLock(tmp_path).acquire()


# ---- failed set-up removes only what it created -----------------------------------------------------------------


def test_failed_set_up_removes_only_what_this_call_created(tmp_path, capsys):
    code, _ = cli(["--out", tmp_path / "new" / "deeper", "--backbone", "nosuch"], capsys)
    assert code == 2 and not (tmp_path / "new").exists()
    empty = tmp_path / "mine" / "empty"
    empty.mkdir(parents=True)
    code, _ = cli(["--out", tmp_path / "mine", "--name", "empty", "--backbone", "nosuch"], capsys)
    assert code == 2 and empty.is_dir() and not any(empty.iterdir())
    killed = fake_run(tmp_path / "runs" / "killed")  # config.yaml and notes, no checkpoint yet
    before = snapshot(killed)
    code, err = cli(["--out", tmp_path / "runs", "--name", "killed", "--resume"], capsys)
    assert code == 2 and "last.ckpt" in err and "--overwrite" in err
    code, err = cli(["--out", tmp_path / "runs", "--name", "killed", "--resume", "--backbone", "nosuch"], capsys)
    assert code == 2 and "backbone" in err
    assert snapshot(killed) == before


# ---- resume ---------------------------------------------------------------------------------------------------


def test_resume_reads_the_runs_own_config(tmp_path, trained):
    run = copy_run(trained, tmp_path)
    parser = train_parser()
    by_path = config_from_args(parser.parse_args(["--resume", str(run), "--epochs", "2"]))
    by_name = config_from_args(parser.parse_args(["--resume", "--out", str(run.parent), "--name", "run",
                                                  "--epochs", "2"]))
    for config in (by_path, by_name):
        assert config.backbone_args == {"base_width": 4} and (config.img_size, config.limit) == (16, 48)
        assert config.epochs == 2 and config.resume is True and config.name == "run"
    with pytest.raises(ConfigError, match="different runs"):
        config_from_args(parser.parse_args(["--resume", str(run), "--name", "other"]))


def test_resume_refuses_model_and_data_changes_and_touches_nothing(tmp_path, trained, capsys):
    run = copy_run(trained, tmp_path)
    before = snapshot(run)
    code, err = cli(["--resume", run, "--backbone", "vit_tiny", "--seed", "3", "--img-size", "32"], capsys)
    assert code == 2 and all(key in err for key in ("backbone", "seed", "img_size", "epochs"))
    assert snapshot(run) == before  # config.yaml still says resnet18; logs not rotated


@pytest.mark.parametrize("damage", ["missing", "truncated", "garbage", "mismatched"])
def test_bad_last_checkpoint_is_a_clean_error_naming_it(tmp_path, trained, capsys, damage):
    run = copy_run(trained, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    if damage == "missing":
        last.unlink()
    elif damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    elif damage == "garbage":
        last.write_bytes(b"not a checkpoint at all")
    else:
        checkpoint = torch.load(last, weights_only=True)
        key = next(k for k in checkpoint["state_dict"] if k.endswith("fc.weight"))
        checkpoint["state_dict"][key] = torch.zeros(3, 3)
        torch.save(checkpoint, last)
    before = snapshot(run)
    code, err = cli(["--resume", run, "--epochs", "2"], capsys)  # more epochs: a finished run is not even read
    assert code == 2 and str(last) in err
    assert snapshot(run) == before


class Payload:
    """A pickle that creates a file when unpickled without weights_only."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return Path.touch, (self.target,)


def test_malicious_checkpoint_runs_no_code_even_when_the_environment_asks(tmp_path, trained, capsys, monkeypatch):
    run = copy_run(trained, tmp_path)
    pwned = tmp_path / "pwned"
    torch.save({"state_dict": {}, "x": Payload(pwned)}, run / "checkpoints" / "last.ckpt")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    code, err = cli(["--resume", run, "--epochs", "2"], capsys)  # more epochs: a finished run is not even read
    assert code == 2 and "last.ckpt" in err
    assert not pwned.exists()


def test_resume_changes_only_safe_keys_prints_them_and_loads_weights_only(tmp_path, trained, capsys, monkeypatch):
    run = copy_run(trained, tmp_path)
    seen: list[object] = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    code, err = cli(["--resume", run, "--epochs", "2"], capsys)
    assert code == 0, err
    assert "resuming" in err and "epochs 1 -> 2" in err
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed"] is True and metrics["epochs_run"] == 2
    assert len(seen) >= 3 and all(flag is True for flag in seen), seen  # ours, fit's and test's loads
    assert (run / "logs" / "metrics.part0.csv").is_file()
    assert make_config({}, {}).epochs != 2 and "epochs: 2" in (run / "config.yaml").read_text()


# ---- non-finite loss, metrics.json ------------------------------------------------------------------------------


def test_non_finite_loss_stops_keeps_the_run_and_says_why(tmp_path, capsys):
    code, err = cli([*TINY_FLAGS, "--epochs", "3", "--lr", "1e6", "--warmup-epochs", "0", "--out", tmp_path,
                     "--name", "nan"], capsys)
    assert code == 2 and "non-finite training loss at step" in err and "cross_entropy=" in err
    run = tmp_path / "nan"
    assert (run / "config.yaml").is_file() and not (run / "metrics.json").exists()
    error = json.loads((run / ERROR_FILE).read_text())
    assert error["status"] == "failed" and error["non_finite_loss"] is True and "step" in error["error"]


def test_finite_training_loss_but_non_finite_test_metric_fails_the_command(tmp_path, capsys):
    """Diverged weights whose training loss stayed finite (huge): the command names the metric and exits 1."""
    code, err = cli([*TINY_FLAGS, "--epochs", "2", "--lr", "1e6", "--precision", "32", "--limit", "64",
                     "--batch-size", "64", "--out", tmp_path, "--name", "div"], capsys)
    metrics = json.loads((tmp_path / "div" / "metrics.json").read_text())
    if all(v is not None for v in metrics["test"].values()):
        pytest.skip("this configuration did not diverge here")
    assert code == 1 and "non-finite test metric(s)" in err and "loss" in err


def test_detection_loss_is_checked_too():
    from visattn.models.detector import build_detector
    from visattn.tasks.common import NonFiniteLossError
    from visattn.tasks.detect import DetectionModule

    model = build_detector("csp_n", num_classes=2, img_size=64)
    module = DetectionModule(model, num_classes=2, img_size=64)
    images = torch.full((2, 3, 64, 64), float("nan"))
    targets = [{"boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0]]), "labels": torch.tensor([1]), "image_id": i}
               for i in range(2)]
    with pytest.raises(NonFiniteLossError, match=r"step 1 \(epoch 1, batch 4\).*cls=nan.*box="):
        module.training_step((images, targets), 3)


def test_metrics_json_writes_null_for_non_finite_values(tmp_path):
    import numpy as np

    path = tmp_path / "metrics.json"
    write_json_atomic(path, {"a": float("nan"), "b": [float("inf"), 1.5], "c": torch.tensor(float("-inf")),
                             "d": {"e": np.float32(2.0)}, "f": torch.tensor(3.0)})

    def refuse(token):
        raise AssertionError(f"{token} is not JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"a": None, "b": [None, 1.5], "c": None,
                                                                   "d": {"e": 2.0}, "f": 3.0}


# ---- --out and config values ------------------------------------------------------------------------------------


def test_out_that_is_a_file_or_read_only_is_refused_before_any_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for out in (afile, afile / "sub"):
        code, err = cli(["--out", out], capsys)
        assert code == 2 and "is a file" in err and str(afile) in err
    assert afile.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, err = cli(["--out", locked / "runs"], capsys)
        assert code == 2 and "permission" in err and not any(locked.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_trainer_settings_lightning_refuses_are_user_errors(tmp_path, capsys):
    code, err = cli(["--accelerator", "gpu", "--out", tmp_path / "runs"], capsys)
    assert code == 2 and "accelerator 'gpu'" in err and not (tmp_path / "runs").exists()


def test_os_errors_are_user_errors_but_bugs_keep_their_traceback():
    assert OSError in USER_ERRORS
    with pytest.raises(ZeroDivisionError):
        run_cli(lambda: 1 // 0)


@pytest.mark.parametrize(("text", "key", "expected"), [
    ("lr: fast", "lr", "a number"),
    ("backbone_args: 8", "backbone_args", "a mapping"),
    ("trainer: 5", "trainer", "a mapping"),
    ("epochs: many", "epochs", "an integer"),
    ("seed: 1.5", "seed", "an integer"),
    ("skip_bad_images: maybe", "skip_bad_images", "true/false"),
    ("optimizer: [adamw]", "optimizer", "a string"),
])
def test_config_values_of_the_wrong_type_name_key_and_type(tmp_path, capsys, text, key, expected):
    path = tmp_path / "c.yaml"
    path.write_text(text + "\n")
    code, err = cli(["--config", path, "--out", tmp_path / "runs"], capsys)
    assert code == 2 and f"'{key}' must be {expected}" in err
    assert not (tmp_path / "runs").exists()


def test_config_numbers_in_yaml_spelling_are_accepted():
    assert make_config({"lr": "1e-3", "precision": 32}, {}).lr == 0.001


def test_non_utf8_config_names_the_file(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("backbone: résnet18\n".encode("latin-1"))
    code, err = cli(["--config", path], capsys)
    assert code == 2 and str(path) in err and "UTF-8" in err


# ---- fault injection: SIGKILL at a random step, resume with --resume RUN_DIR alone --------------------------------


KILL_AT_STEP = """
import os, signal, sys
import lightning as L
import torch
import visattn.training as vt
from visattn.cli.main import run_cli
from visattn.cli.train import main as train_main

torch.set_num_threads({threads})
build = vt.build_trainer

class Kill(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == {step}:
            os.kill(os.getpid(), signal.SIGKILL)

def with_kill(*args, **kwargs):
    trainer, throughput = build(*args, **kwargs)
    trainer.callbacks.append(Kill())
    return trainer, throughput

vt.build_trainer = with_kill
sys.argv = ["tools/train.py", *{argv!r}]
run_cli(train_main)
"""


def test_sigkill_at_a_random_step_then_resume_run_dir_alone_matches_uninterrupted(tmp_path, capsys):
    epochs, steps_per_epoch = 3, 3  # limit 24 / batch 8
    step = random.Random().randint(steps_per_epoch + 1, epochs * steps_per_epoch - 1)  # after the first last.ckpt
    step = int(os.environ.get("VISATTN_TEST_KILL_STEP", step))  # to replay a failure
    # fp32: under bf16-mixed only layer4.0.conv1's taps that see nothing but zero padding (16 px makes its input 1x1)
    # came out up to 7e-3 apart after a resume, every other tensor and metric equal: likely the bf16 kernel's
    # not-quite-zero gradient there, amplified by Adam; outputs never see those taps (VISATTN_TEST_KILL_STEP=7)
    flags = [*TINY_FLAGS, "--epochs", str(epochs), "--limit", "24", "--batch-size", "8", "--seed", "7",
             "--precision", "32", "--out", str(tmp_path)]
    script = KILL_AT_STEP.format(threads=torch.get_num_threads(), step=step, argv=[*flags, "--name", "killed"])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, f"step {step}: {proc.stderr[-2000:]}"
    run = tmp_path / "killed"
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "metrics.json").exists()
    code, err = cli(["--resume", run], capsys)
    assert code == 0, f"step {step}: {err[-2000:]}"
    code, err = cli([*flags, "--name", "straight"], capsys)
    assert code == 0, err
    resumed = json.loads((run / "metrics.json").read_text())
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert resumed["resumed"] is True and resumed["epochs_run"] == straight["epochs_run"] == epochs
    for key in ("acc", "loss", "f1"):
        assert resumed["test"][key] == pytest.approx(straight["test"][key], rel=1e-5, abs=1e-6), \
            (step, resumed, straight)
    assert resumed["best_val"] == pytest.approx(straight["best_val"], abs=1e-6), (step, resumed, straight)
    weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    reference = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert weights.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-5, atol=1e-6, msg=f"{key} (killed at step {step})")
