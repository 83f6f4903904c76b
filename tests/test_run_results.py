"""Per-run results (issue 23, finding 5): what ``train`` leaves in every run for a person to look at."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from visattn.cli.train import main as train_main
from visattn.results import NO_MATPLOTLIB, epoch_history, format_test_metrics

TINY = ["--data", "digits", "--img-size", "16", "--epochs", "2", "--batch-size", "32", "--limit", "64",
        "--num-workers", "0", "--precision", "32", "--set", "backbone_args.base_width=4"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny convs run fastest on one thread


def test_size_maps_are_printed_only_where_the_split_has_such_objects():
    line = format_test_metrics({"map": 0.5, "map50": 0.75, "map_small": -1.0, "map_medium": 0.25, "map_large": -1.0})
    assert line == "map=0.5000, map50=0.7500, map_medium=0.2500"
    assert format_test_metrics({"acc": 0.9, "loss": None}) == "acc=0.9000, loss=None"


def rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_classification_run_writes_curves_confusion_matrix_and_per_class_table(tmp_path, capsys):
    assert train_main([*TINY, "--backbone", "resnet18", "--attn", "se", "--out", str(tmp_path), "--name", "r"]) == 0
    run = tmp_path / "r"
    printed = capsys.readouterr().out
    for name in ("results.png", "confusion_matrix.png"):
        assert (run / name).is_file() and (run / name).read_bytes()[:4] == b"\x89PNG", name
    table = rows(run / "per_class.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["class"] for r in table] == metrics["class_names"]
    assert sum(int(r["support"]) for r in table) == metrics["test_size"]
    assert all(0.0 <= float(r["recall"]) <= 1.0 for r in table)
    assert "per class (test split, best checkpoint):" in printed and "precision" in printed
    history = epoch_history(run / "logs" / "metrics.csv")
    assert sorted(history["train/loss_epoch"]) == [0, 1] and sorted(history["val/acc"]) == [0, 1]


def test_without_matplotlib_training_finishes_and_says_which_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    assert train_main([*TINY, "--epochs", "1", "--backbone", "resnet18", "--attn", "eca", "--out", str(tmp_path),
                       "--name", "r"]) == 0
    run = tmp_path / "r"
    printed = capsys.readouterr().out
    assert NO_MATPLOTLIB in printed and "pip install 'visattn[viz]'" in printed
    assert (run / "metrics.json").is_file() and (run / "per_class.csv").is_file()
    assert not (run / "results.png").exists() and not (run / "confusion_matrix.png").exists()


def test_detection_run_writes_pr_curve_per_class_ap_and_prediction_grid(tmp_path, capsys):
    args = ["--task", "detect", "--backbone", "csp_n", "--attn", "eca", "--img-size", "64", "--epochs", "1",
            "--batch-size", "8", "--num-workers", "0", "--precision", "32", "--out", str(tmp_path / "runs"),
            "--name", "det", "--set",
            f"data_args={{num_train: 16, num_val: 8, num_test: 8, cache_dir: {tmp_path / 'cache'}}}"]
    assert train_main(args) == 0
    run = tmp_path / "runs" / "det"
    printed = capsys.readouterr().out
    for name in ("results.png", "pr_curve.png", "val_predictions.png", "per_class.csv"):
        assert (run / name).is_file(), name
    table = rows(run / "per_class.csv")
    assert table and set(table[0]) == {"class", "ap50_95", "ap50", "recall", "instances"}
    names = json.loads((run / "metrics.json").read_text())["class_names"]
    assert {r["class"] for r in table} <= set(names) and sum(int(r["instances"]) for r in table) > 0
    assert "ap50_95" in printed
    test = json.loads((run / "metrics.json").read_text())["test"]
    shown = next(line for line in printed.splitlines() if line.startswith("test: "))
    for key in ("map_small", "map_medium", "map_large"):
        assert (key in shown) == (test[key] >= 0), (key, test[key], shown)
