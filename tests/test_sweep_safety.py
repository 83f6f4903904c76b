"""Sweeps never touch a user's folder, check the whole grid before training, and fail loudly when a point fails."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

import visattn.sweep.run as sweep_run
from visattn.cli.main import run_cli
from visattn.cli.sweep import main as sweep_main
from visattn.config import ConfigError
from visattn.rundir import DirLock
from visattn.sweep import make_spec, run_sweep
from visattn.sweep.execute import is_done, run_error
from visattn.sweep.grid import check_sweep_file, expand
from visattn.sweep.run import MARKER, claim_sweep_dir

TRAIN = {"data": "digits", "img_size": 16, "epochs": 1, "batch_size": 16, "limit": 32, "num_workers": 0,
         "lr": 0.01, "backbone_args": {"base_width": 4}}
TINY = {"backbone": "resnet18", "attn": ["none"], "seeds": [0], "train": TRAIN}


def user_folder(root: Path) -> Path:
    folder = root / "victim"
    (folder / "docs").mkdir(parents=True)
    (folder / "docs" / "thesis.txt").write_text("four years of work")
    return folder


def sweep_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``tools/sweep.py ARGS`` in this process (as its ``run_cli`` wrapper runs it): exit code and stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda: sweep_main(list(args)))
    return stop.value.code, capsys.readouterr().err


def test_overwrite_refuses_a_folder_the_sweep_did_not_make(tmp_path):
    victim = user_folder(tmp_path)
    with pytest.raises(ConfigError, match=MARKER):
        run_sweep(make_spec(TINY, {}), out=tmp_path, name="victim", overwrite=True, echo=False)
    with pytest.raises(ConfigError, match="not a visattn sweep directory"):
        run_sweep(make_spec(TINY, {}), out=tmp_path, name="victim", echo=False)
    assert (victim / "docs" / "thesis.txt").read_text() == "four years of work"
    assert sorted(p.name for p in victim.iterdir()) == ["docs"]  # no marker, lock or sweep.json added either


def test_overwrite_cli_is_one_paragraph_and_keeps_the_folder(tmp_path, capsys):
    victim = user_folder(tmp_path)
    code, err = sweep_cli(capsys, "--out", str(tmp_path), "--name", "victim", "--overwrite", "--attn", "none",
                          "--epochs", "1", "--limit", "32", "--img-size", "16")
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # one paragraph, after any notices
    assert last.startswith("visattn: error: --overwrite") and MARKER in last and "victim" in last
    assert (victim / "docs" / "thesis.txt").is_file()


@pytest.mark.parametrize("name", ["../victim", "..", ".", "", "a/b", "/abs/victim"])
def test_a_sweep_name_is_one_folder_name(tmp_path, name):
    victim = user_folder(tmp_path / "out")
    with pytest.raises(ConfigError, match="single folder name|non-empty"):
        run_sweep(make_spec(TINY, {}), out=tmp_path / "out" / "victim" / "docs", name=name, overwrite=True,
                  echo=False)
    with pytest.raises(ConfigError, match="single folder name|non-empty"):
        make_spec({**TINY, "name": name}, {})
    assert (victim / "docs" / "thesis.txt").is_file()
    assert sorted(p.name for p in (victim / "docs").iterdir()) == ["thesis.txt"]


def test_overwrite_empties_only_a_marked_unlocked_sweep_directory(tmp_path):
    sweep_dir = tmp_path / "out" / "mine"
    with claim_sweep_dir(sweep_dir, overwrite=False) as claim:
        assert (sweep_dir / MARKER).is_file() and claim.created == [tmp_path / "out", sweep_dir]
        spec = make_spec(TINY, {})
        check_sweep_file(sweep_dir, spec, expand(spec), sweep_id=claim.sweep_id)  # as run_sweep does first
        claim.started = True
        (sweep_dir / "runs" / "a-s0").mkdir(parents=True)
        (sweep_dir / "runs" / "a-s0" / "metrics.json").write_text("{}")
    with DirLock(sweep_dir, what="sweep"), pytest.raises(ConfigError, match="in use"):  # a live sweep holds it
        run_sweep(make_spec(TINY, {}), out=tmp_path / "out", name="mine", overwrite=True, echo=False)
    assert (sweep_dir / "runs" / "a-s0" / "metrics.json").is_file()
    with DirLock(sweep_dir / "runs" / "a-s0"), pytest.raises(ConfigError, match="in use"):  # a run still alive
        run_sweep(make_spec(TINY, {}), out=tmp_path / "out", name="mine", overwrite=True, echo=False)
    assert (sweep_dir / "runs" / "a-s0" / "metrics.json").is_file()
    victim = user_folder(tmp_path)
    (sweep_dir / "linked").symlink_to(victim)  # links inside a sweep directory are removed, never followed
    with claim_sweep_dir(sweep_dir, overwrite=True) as claim:
        assert sorted(p.name for p in sweep_dir.iterdir()) == [".lock", MARKER]
        check_sweep_file(sweep_dir, spec, expand(spec), sweep_id=claim.sweep_id)  # as run_sweep does next
    shutil.rmtree(sweep_dir / "runs", ignore_errors=True)
    (sweep_dir / "runs").symlink_to(victim)
    with claim_sweep_dir(sweep_dir, overwrite=True):
        assert sorted(p.name for p in sweep_dir.iterdir()) == [".lock", MARKER]
    assert (victim / "docs" / "thesis.txt").read_text() == "four years of work"


def test_a_failed_start_removes_only_what_it_made(tmp_path, monkeypatch):
    def fail(*args: object, **kwargs: object) -> None:
        raise ConfigError("injected failure before the first run")

    monkeypatch.setattr(sweep_run, "check_sweep_file", fail)
    (tmp_path / "keep").mkdir()
    with pytest.raises(ConfigError, match="injected"):
        run_sweep(make_spec(TINY, {}), out=tmp_path / "keep" / "new" / "deeper", name="s", echo=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"] and not any((tmp_path / "keep").iterdir())
    empty = tmp_path / "keep" / "empty"  # a folder the user made: it stays, as empty as it was
    empty.mkdir()
    with pytest.raises(ConfigError, match="injected"):
        run_sweep(make_spec(TINY, {}), out=tmp_path / "keep", name="empty", echo=False)
    assert empty.is_dir() and not any(empty.iterdir())


def test_an_older_unmarked_sweep_resumes_but_is_not_overwritten(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    spec = make_spec(TINY, {})
    check_sweep_file(old, spec, expand(spec))  # as an older visattn wrote it: no marker, no sweep_id
    with pytest.raises(ConfigError, match=MARKER):
        with claim_sweep_dir(old, overwrite=True):
            pass
    assert not (old / MARKER).exists() and (old / "sweep.json").is_file()
    with claim_sweep_dir(old, overwrite=False):
        assert (old / MARKER).is_file() and (old / "sweep.json").is_file()


@pytest.mark.parametrize(("values", "expected"), [
    ({"attn": ["none", "cbma"]}, ["'cbma'", "Did you mean 'cbam'", "Valid attention block names"]),
    ({"attn": ["se"], "at": ["layer9.*"]}, ["'layer9.*' matches no slot", "layer4.0.slot"]),
    ({"backbone": ["resnet18", "resnet81"], "attn": ["se"]}, ["'resnet81'", "Did you mean"]),
    ({"attn": [{"block": "se", "args": {"redution": 4}}]}, ["'redution'", "reduction"]),
    ({"train": {**TRAIN, "data": "digitz"}}, ["'digitz'", "digits"]),
    ({"train": {**TRAIN, "trainer": {"max_step": 2}}}, ["'max_step'", "max_steps"]),
    ({"train": {**TRAIN, "data_args": {"nosuch": 1}}}, ["'nosuch'"]),
    ({"train": {**TRAIN, "pretrained": "/nonexistent/w.pth"}}, ["/nonexistent/w.pth"]),
    ({"attn": ["none", "cbma"], "backbone": ["resnet18", "nosuch"]}, ["2 problem(s)", "'cbma'", "'nosuch'"]),
])
def test_the_whole_grid_is_checked_before_the_first_run(tmp_path, values, expected):
    with pytest.raises(ConfigError) as err:
        run_sweep(make_spec({**TINY, **values}, {}), out=tmp_path / "out", name="s", echo=False)
    for text in expected:
        assert text in str(err.value)
    assert "nothing was run" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_unknown_block_on_the_command_line_trains_nothing(tmp_path, capsys):
    code, err = sweep_cli(capsys, "--out", str(tmp_path / "out"), "--attn", "none,cbma", "--epochs", "1",
                          "--limit", "32", "--img-size", "16", "--num-workers", "0")
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("visattn: error: the sweep grid") and "'cbma'" in last and "Did you mean 'cbam'" in last
    assert not (tmp_path / "out").exists()


def write_run(run_dir: Path, metrics: dict | None = None, error: str | dict | None = None) -> Path:
    """A run directory as training leaves it: metrics.json when it finished, then error.json (``write_error``'s
    fields) when a later attempt failed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if metrics is not None:
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if isinstance(error, str):
        error = {"status": "failed", "error_type": "RuntimeError", "error": error}
    if error is not None:
        (run_dir / "error.json").write_text(json.dumps(error))
    return run_dir


@pytest.mark.parametrize(("metrics", "error", "reason"), [
    ({"test": {"acc": 0.5, "loss": None}}, None, "test.loss=null"),
    ({"test": {"acc": float("nan"), "loss": 1.0}}, None, "test.acc=NaN"),
    ({"test": {}}, None, "no test metrics"),
    ({"test": {"acc": 0.5}}, "non-finite loss at step 3", "non-finite loss at step 3"),
    ({"test": {"acc": 0.5}}, {"status": "failed", "error_type": "NonFiniteLossError", "error": "loss nan"}, "loss nan"),
    (None, "non-finite loss at step 7 (ce=nan)", "step 7"),
    (None, {"status": "failed", "error_type": "NonFiniteLossError", "error": "loss nan at step 2"}, "at step 2"),
    (None, None, "no metrics.json"),
])
def test_a_diverged_or_failed_run_is_not_done(tmp_path, metrics, error, reason):
    run_dir = write_run(tmp_path / "runs" / "r-s0", metrics, error)
    assert reason in run_error(run_dir)
    assert not is_done(tmp_path, "r-s0")


def test_a_finished_run_is_done_even_after_an_earlier_failed_attempt(tmp_path):
    run_dir = write_run(tmp_path / "runs" / "r-s0", error="killed")
    os.utime(run_dir / "error.json", (1, 1))  # the earlier attempt; a resume then finished the run
    write_run(run_dir, {"test": {"acc": 0.5, "loss": 1.2}, "status": "ok"})
    assert run_error(run_dir) is None and is_done(tmp_path, "r-s0")
    (run_dir / "error.json").write_text(json.dumps({"status": "failed", "error": "the later attempt diverged"}))
    assert run_error(run_dir) == "the later attempt diverged" and not is_done(tmp_path, "r-s0")


def test_failed_points_make_the_sweep_exit_non_zero_with_a_summary(tmp_path, capsys):
    """One point diverges (lr 1e6), one cannot be built (8 heads on 3 channels): exit 1, both named with reasons."""
    bad = {"block": "mhsa", "at": "input", "args": {"heads": 8}}
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "attn": ["none", bad], "train": {**TRAIN, "lr": 1.0e6}}))
    code, err = sweep_cli(capsys, "--config", str(config), "--out", str(tmp_path))
    assert code == 1, err
    summary = err.strip().splitlines()[-1]
    assert "2 of 2 grid point(s) failed" in summary
    assert "resnet18-none-s0" in summary and "non-finite" in summary.lower()
    assert "resnet18-mhsa@input-s0" in summary and "heads" in summary
    with open(tmp_path / "tiny" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["status"] for r in rows] == ["failed", "failed"]
