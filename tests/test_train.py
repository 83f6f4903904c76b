"""Classification training end to end: short fits, run directories, resume after SIGKILL, DDP, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from visattn.cli.train import main as train_main
from visattn.config import ConfigError, make_config
from visattn.rundir import read_metrics_csv
from visattn.training import train

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "resnet18": {"base_width": 8},
    "vit_tiny": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2},
    "swin_t": {"patch_size": 2, "window_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2]},
}
METRIC_KEYS = {"backbone", "attn", "params", "macs", "img_size", "epochs", "seed", "test", "train_time_s",
               "throughput_img_s"}


def quick(tmp_path: Path, **overrides):
    values = dict(data="digits", img_size=32, epochs=3, batch_size=32, limit=160, num_workers=0, out=str(tmp_path),
                  lr=3e-3, warmup_epochs=0.5)
    values.update(overrides)
    return make_config({}, values)


def epoch_losses(run_dir: Path) -> list[float]:
    rows = read_metrics_csv(run_dir)
    return [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]


@pytest.mark.parametrize(("backbone", "attn"), [("resnet18", "cbam"), ("vit_tiny", "se"), ("swin_t", "eca")])
def test_short_fit_learns_and_writes_run_dir(tmp_path, backbone, attn):
    config = quick(tmp_path, backbone=backbone, attn=attn, backbone_args=TINY[backbone], name="run")
    metrics = train(config)
    run_dir = tmp_path / "run"
    assert METRIC_KEYS <= set(metrics)
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["test"]["acc"] == pytest.approx(metrics["test"]["acc"])
    assert on_disk["params"] > 0 and on_disk["macs"] > 0 and on_disk["throughput_img_s"] > 0
    assert on_disk["attn"] == attn and on_disk["backbone"] == backbone
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    losses = epoch_losses(run_dir)
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert 0.0 <= on_disk["test"]["acc"] <= 1.0


KILL_SCRIPT = """
import os, signal, sys
import lightning as L
from visattn.config import make_config
from visattn.training import prepare, fit

class Kill(L.Callback):
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == {kill_epoch}:
            os.kill(os.getpid(), signal.SIGKILL)

config = make_config({{}}, {values!r})
prepared = prepare(config)
prepared.trainer.callbacks.append(Kill())
fit(prepared)
"""


def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    values = dict(backbone="resnet18", attn="se", backbone_args=TINY["resnet18"], data="digits", img_size=32,
                  epochs=3, batch_size=32, limit=160, num_workers=0, out=str(tmp_path), seed=5)
    reference = train(make_config({}, {**values, "name": "straight"}))
    script = KILL_SCRIPT.format(kill_epoch=2, values={**values, "name": "killed"})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_dir = tmp_path / "killed"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "metrics.json").exists()
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
    with pytest.raises(ConfigError, match="already exists"):
        train(make_config({}, {**values, "name": "killed"}))
    resumed = train(make_config({}, {**values, "name": "killed", "resume": True}))
    assert resumed["resumed"] is True
    assert resumed["test"]["acc"] == reference["test"]["acc"]
    assert resumed["test"]["loss"] == pytest.approx(reference["test"]["loss"], rel=1e-5)
    assert len(epoch_losses(run_dir)) >= 3  # the rows logged before the kill are kept
    straight = torch.load(tmp_path / "straight/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    again = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for key, value in straight.items():
        torch.testing.assert_close(again[key], value, rtol=1e-5, atol=1e-6)


def test_ddp_two_cpu_processes(tmp_path):
    cmd = [sys.executable, "tools/train.py", "--backbone", "resnet18", "--attn", "eca", "--data", "digits",
           "--limit", "96", "--epochs", "1", "--batch-size", "16", "--img-size", "32", "--num-workers", "0",
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--out", str(tmp_path), "--name", "ddp",
           "--set", "backbone_args={base_width: 8}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert "acc" in metrics["test"]
    assert "world_size=2" in proc.stderr or "Initializing distributed: GLOBAL_RANK: 1" in proc.stderr + proc.stdout


# ---- bad input: one clear paragraph, nothing left behind ------------------------------------------------------


def run_cli_expect_error(args: list[str], tmp_path: Path) -> str:
    with pytest.raises((ConfigError, KeyError, ValueError, TypeError, FileNotFoundError)) as info:
        train_main([*args, "--out", str(tmp_path), "--epochs", "1", "--limit", "32", "--num-workers", "0"])
    message = info.value.args[0] if info.value.args else str(info.value)
    return str(message)


def test_unknown_names_list_choices(tmp_path):
    message = run_cli_expect_error(["--backbone", "resnet19"], tmp_path)
    assert "resnet18" in message and "swin_t" in message
    message = run_cli_expect_error(["--attn", "cbma"], tmp_path)
    assert "Did you mean 'cbam'" in message and "eca" in message
    message = run_cli_expect_error(["--data", "digitz"], tmp_path)
    assert "digits" in message
    assert not any(tmp_path.iterdir()), "a failed set-up left a run directory behind"


def test_unknown_config_key_names_nearest(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("backbone: resnet18\nepoch: 3\n")
    message = run_cli_expect_error(["--config", str(config)], tmp_path)
    assert "'epoch'" in message and "Did you mean 'epochs'" in message


def test_image_size_vit_cannot_take(tmp_path):
    message = run_cli_expect_error(["--backbone", "vit_tiny", "--img-size", "30"], tmp_path)
    assert "30" in message and "patch" in message


def test_existing_run_dir_not_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    message = run_cli_expect_error(["--name", "taken"], tmp_path)
    assert "already exists" in message and "--overwrite" in message
    assert (tmp_path / "taken" / "keep.txt").read_text() == "x"


def make_folder(root: Path, classes: dict[str, int]) -> Path:
    from PIL import Image

    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (12, 12), (i * 20 % 255, 40, 90)).save(root / name / f"{i}.png")
    return root


def test_data_folder_errors(tmp_path):
    out = tmp_path / "runs"
    missing = tmp_path / "nowhere"
    message = run_cli_expect_error(["--data", "imagefolder", "--data-dir", str(missing)], out)
    assert str(missing) in message
    empty = tmp_path / "empty"
    empty.mkdir()
    message = run_cli_expect_error(["--data", "imagefolder", "--data-dir", str(empty)], out)
    assert "empty" in message.lower() or "no " in message.lower()
    one = make_folder(tmp_path / "one", {"cat": 4})
    message = run_cli_expect_error(["--data", "imagefolder", "--data-dir", str(one)], out)
    assert "class" in message.lower()
    bad = make_folder(tmp_path / "bad", {"cat": 6, "dog": 6})
    (bad / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    message = run_cli_expect_error(["--data", "imagefolder", "--data-dir", str(bad)], out)
    assert "broken.png" in message
    assert not out.exists() or not any(out.iterdir())


def test_skip_bad_images_trains_and_counts(tmp_path):
    data = make_folder(tmp_path / "pets", {"cat": 10, "dog": 10})
    (data / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    (data / "cat" / "empty.jpg").write_bytes(b"")
    train_main(["--data", "imagefolder", "--data-dir", str(data), "--skip-bad-images", "--epochs", "1",
                "--img-size", "32", "--batch-size", "8", "--num-workers", "0", "--out", str(tmp_path / "runs"),
                "--name", "skip", "--set", "backbone_args={base_width: 8}"])
    metrics = json.loads((tmp_path / "runs" / "skip" / "metrics.json").read_text())
    assert metrics["skipped_images"] == 2 and "acc" in metrics["test"]


def test_cli_error_is_one_paragraph_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "tools/train.py", "--backbone", "resnet5", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("visattn: error:") and "resnet50" in proc.stderr
