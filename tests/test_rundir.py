"""What training writes is what the readers read: every module that reads a run goes through ``visattn.rundir``,
and each reader is checked here on a run that ``visattn.training`` really made (conftest's session ``tiny_run``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from visattn.rundir import (
    CHECKPOINTS,
    CONFIG_FILE,
    ERROR_FILE,
    METRICS_FILE,
    find_checkpoint,
    finished_metrics,
    is_run_dir,
    json_safe,
    read_error,
    read_metrics,
    read_metrics_csv,
    read_run_config,
    read_run_files,
    run_error,
    write_error,
)


def test_the_config_reader_returns_the_config_training_ran(tiny_run):
    run_dir, _, values = tiny_run
    config = read_run_config(run_dir)
    for key, value in values.items():
        assert getattr(config, key) == value, key
    assert config.name == "run" and config.out == str(run_dir.parent)
    assert config.run_id and is_run_dir(run_dir)  # config.yaml repeats the marker's id
    raw, metrics = read_run_files(run_dir)
    assert raw["run_id"] == config.run_id and metrics == read_metrics(run_dir)


def test_metrics_json_is_what_fit_returned_and_holds_every_key_a_reader_uses(tiny_run):
    run_dir, returned, _ = tiny_run
    metrics = read_metrics(run_dir)
    assert metrics == json.loads(json.dumps(json_safe(returned)))  # the file holds exactly what fit returned
    # export / evaluate / the sweep's latency table (in_chans, num_classes, class_names), the sweep report
    # (test, test_size, test_is_val, params, macs, train_time_s, throughput_img_s), resume (epochs)
    for key in ("in_chans", "num_classes", "class_names", "test", "test_size", "test_is_val", "params", "macs",
                "train_time_s", "throughput_img_s", "epochs"):
        assert key in metrics, key
    assert metrics["in_chans"] == 3 and metrics["num_classes"] == 10 and len(metrics["class_names"]) == 10
    assert finished_metrics(run_dir) == metrics
    assert run_error(run_dir) is None


def test_the_logged_rows_and_checkpoints_are_where_readers_look(tiny_run):
    run_dir, _, _ = tiny_run
    rows = read_metrics_csv(run_dir)
    assert any(row.get("val/acc") for row in rows) and any(row.get("train/loss_epoch") or row.get("train/loss")
                                                         for row in rows)
    for name in ("best", "last"):
        assert find_checkpoint(run_dir, name) == run_dir / CHECKPOINTS / f"{name}.ckpt"


def test_the_model_readers_rebuild_the_trained_model(tiny_run):
    from visattn.export import load_run
    from visattn.sweep.latency import rebuild_model

    run_dir, _, values = tiny_run
    model, spec = load_run(run_dir)  # strict state-dict load: the spec matches the checkpoint
    assert (spec.backbone, spec.num_classes, spec.in_chans, spec.img_size) == ("resnet18", 10, 3, values["img_size"])
    rebuilt, size = rebuild_model(run_dir)
    assert size == (1, 3, values["img_size"], values["img_size"])
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]


def test_error_json_written_by_a_failed_attempt_is_what_the_sweep_reads(tiny_run, tmp_path):
    run_dir = Path(shutil.copytree(tiny_run[0], tmp_path / "run"))
    assert read_error(run_dir) is None
    write_error(run_dir, RuntimeError("disk on fire\nsecond line"))
    assert (run_dir / ERROR_FILE).is_file()
    assert read_error(run_dir) == "RuntimeError: disk on fire second line"
    assert run_error(run_dir) == read_error(run_dir)  # newer than metrics.json: the run's last attempt failed
    assert finished_metrics(run_dir) is None
    (run_dir / METRICS_FILE).unlink()
    (run_dir / ERROR_FILE).unlink()
    assert "no metrics.json" in run_error(run_dir)
    assert (run_dir / CONFIG_FILE).is_file()
