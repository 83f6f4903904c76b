"""Ablation sweeps: grid expansion, statistics, a tiny real sweep killed and resumed, failures, the Ray executor."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from scipy.stats import ttest_ind

from visattn.config import ConfigError
from visattn.data.datamodule import available_cpus
from visattn.sweep import RunPlan, expand, make_spec, report_sweep, run_sweep, welch
from visattn.sweep.execute import launch_values
from visattn.sweep.grid import check_sweep_file
from visattn.sweep.report import RunResult, summarize

REPO = Path(__file__).resolve().parents[1]
# precision 32: the Ray test compares losses across processes to 1e-6, tighter than bf16 kernels repeat across processes
TRAIN = {"data": "digits", "img_size": 32, "epochs": 2, "batch_size": 32, "limit": 64, "num_workers": 0,
         "lr": 0.01, "backbone_args": {"base_width": 8}, "precision": "32"}
BAD = {"block": "mhsa", "at": "input", "args": {"heads": 8}}  # 3 input channels cannot split into 8 heads
SWEEP = {"backbone": "resnet18", "attn": ["none", "se", BAD], "seeds": [0, 1], "train": TRAIN}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_expand_crosses_blocks_places_hparams_references_and_seeds():
    spec = make_spec({"backbone": "resnet18", "attn": "none,se", "at": ["default", "layer4.*.slot"], "seeds": 2,
                      "grid": {"lr": ["1e-3", 0.002]}, "reference": ["resnet34"], "train": {"epochs": 1}}, {})
    plans = expand(spec)
    configs = list(dict.fromkeys(p.config for p in plans))
    assert len(plans) == 2 * len(configs)  # seeds x configurations
    assert len(configs) == 2 * (1 + 2 + 1)  # lr values x (none, se at two places, reference)
    assert [p.seed for p in plans[: len(configs)]] == [0] * len(configs)  # seed 0 of everything first
    se_last = next(p for p in plans if p.attn == "se@layer4.x.slot" and p.hparams == {"lr": 0.001})
    assert se_last.values["attn"] == {"block": "se", "at": "layer4.*.slot"} and se_last.values["lr"] == 0.001
    assert se_last.baseline == "resnet18/none lr=0.001"
    ref = next(p for p in plans if p.kind == "reference")
    assert ref.backbone == "resnet34" and ref.values["attn"] is None and ref.baseline.startswith("resnet18/none")
    assert len({p.run_id for p in plans}) == len(plans)
    assert spec.metric_name == "test.acc"
    assert make_spec({"train": {"task": "detect"}}, {}).metric_name == "test.map"


@pytest.mark.parametrize(("values", "match"), [
    ({"train": {"seed": 3}}, "set by the sweep"),
    ({"train": {"epoch": 3}}, "epochs"),
    ({"atn": ["se"]}, "attn"),
    ({"seeds": [1, 1]}, "repeats"),
    ({"grid": {"lr": 0.1}}, "non-empty list"),
    ({"attn": ["se", {"block": "se"}]}, "distinct labels"),
])
def test_bad_specs_name_the_problem(values, match):
    with pytest.raises(ConfigError, match=match):
        expand(make_spec(values, {}))


def test_different_grid_in_same_directory_is_refused(tmp_path):
    spec = make_spec({"attn": "none,se", "train": {"epochs": 1}}, {})
    check_sweep_file(tmp_path, spec, expand(spec))
    check_sweep_file(tmp_path, spec, expand(spec))  # the same grid again is fine
    other = make_spec({"attn": "none,eca", "train": {"epochs": 1}}, {})
    with pytest.raises(ConfigError, match="--overwrite"):
        check_sweep_file(tmp_path, other, expand(other))
    changed = make_spec({"attn": "none,se", "train": {"epochs": 2}}, {})
    with pytest.raises(ConfigError, match="runs with changed settings"):
        check_sweep_file(tmp_path, changed, expand(changed))


def test_a_sweep_grows_by_seeds_and_configurations_but_never_drops_runs(tmp_path):
    spec = make_spec({"attn": "none,se", "seeds": 2, "train": {"epochs": 1}}, {})
    assert check_sweep_file(tmp_path, spec, expand(spec)) == []
    more = make_spec({"attn": "none,se,eca", "seeds": 3, "train": {"epochs": 1}}, {})
    added = check_sweep_file(tmp_path, more, expand(more))
    assert sorted(added) == sorted({p.run_id for p in expand(more)} - {p.run_id for p in expand(spec)})
    assert len(added) == 3 * 3 - 2 * 2
    stored = json.loads((tmp_path / "sweep.json").read_text())
    assert len(stored["runs"]) == 9 and stored["spec"]["seeds"] == [0, 1, 2]
    with pytest.raises(ConfigError, match="runs only in the old grid"):  # back to fewer seeds: refused
        check_sweep_file(tmp_path, spec, expand(spec))


def test_unfinished_runs_resume_from_last_checkpoint(tmp_path):
    run_dir = tmp_path / "runs" / "a-s0"
    assert launch_values({"seed": 0}, tmp_path, "a-s0") == {"seed": 0, "out": str(tmp_path / "runs"), "name": "a-s0",
                                                            "resume": False, "overwrite": False}
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")  # started, killed before its first checkpoint
    assert launch_values({}, tmp_path, "a-s0")["overwrite"] is True
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"x")
    values = launch_values({}, tmp_path, "a-s0")
    assert values["resume"] is True and values["overwrite"] is False


def test_welch_and_verdicts():
    base, far, near = [0.50, 0.52, 0.51], [0.80, 0.81, 0.79], [0.51, 0.50, 0.53]
    assert welch(far, base) == pytest.approx(ttest_ind(far, base, equal_var=False).pvalue)
    assert welch([0.5], base) is None

    def results(config: str, values: list[float]) -> list[RunResult]:
        return [RunResult(RunPlan(f"{config}-s{i}", config, "grid", "resnet18", config.split("/")[1], {}, i, {},
                                  "resnet18/none"), "ok", v, 10, 10) for i, v in enumerate(values)]

    rows = summarize(results("resnet18/none", base) + results("resnet18/se", far) + results("resnet18/eca", near)
                     + results("resnet18/cbam", [0.7]), {})
    verdicts = {r.config: r.verdict for r in rows}
    assert verdicts["resnet18/none"] == "baseline"
    assert verdicts["resnet18/se"].startswith("better (Holm p=")
    assert verdicts["resnet18/eca"].startswith("inconclusive") and "detectable" in verdicts["resnet18/eca"]
    assert verdicts["resnet18/cbam"].startswith("n/a")


def descendants(pid: int) -> set[int]:
    """Every process under ``pid`` (Linux /proc)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            out |= {child} | descendants(child)
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """The sweep CLI SIGKILLed once the first run has finished, then run again to completion."""
    root = tmp_path_factory.mktemp("sweep")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(SWEEP))
    cmd = [sys.executable, str(REPO / "tools" / "sweep.py"), "--config", str(config), "--out", str(root),
           # one run at a time with every core, the arrangement the Ray comparison below repeats
           "--workers", "1", "--no-ort-latency"]
    sweep_dir = root / "tiny"
    with open(root / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not list(sweep_dir.glob("runs/*/metrics.json")):
            assert proc.poll() is None, (root / "first.log").read_text()
            assert time.monotonic() < deadline, "the first run did not finish in time"
            time.sleep(0.2)
        children = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        at_kill = sorted(sweep_dir.glob("runs/*/metrics.json"))
    first = next(sweep_dir.glob("runs/*/metrics.json"))
    first_mtime = first.stat().st_mtime_ns
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    orphans = [pid for pid in children if alive(pid)]
    after_kill = sorted(sweep_dir.glob("runs/*/metrics.json"))  # an orphaned run would have finished by now
    start = time.perf_counter()
    result = run_sweep(make_spec(yaml.safe_load(config.read_text()), {}), out=root, name="tiny", echo=False,
                       ort_latency=False)
    return dict(result=result, sweep_dir=sweep_dir, first=first, first_mtime=first_mtime, orphans=orphans,
                children=children, at_kill=at_kill, after_kill=after_kill, seconds=time.perf_counter() - start)


def test_killed_sweep_resumes_and_writes_tables(killed_and_resumed):
    sweep_dir, first = killed_and_resumed["sweep_dir"], killed_and_resumed["first"]
    assert killed_and_resumed["children"] and not killed_and_resumed["orphans"]  # the kill took the runs with it
    assert killed_and_resumed["after_kill"] == killed_and_resumed["at_kill"]
    assert first.stat().st_mtime_ns == killed_and_resumed["first_mtime"]  # the finished run was not redone
    first_log = sweep_dir / "logs" / f"{first.parent.name}.log"
    assert first_log.read_text().count("===== ") == 1
    rows = read_csv(sweep_dir / "results.csv")
    assert len(rows) == 3 * 2
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["attn"] for r in ok} == {"none", "se"} and len(ok) == 4
    for row in ok:
        metrics = json.loads((sweep_dir / "runs" / row["run_id"] / "metrics.json").read_text())
        assert float(row["metric"]) == metrics["test"]["acc"] and int(row["macs"]) == metrics["macs"] > 0
        assert row["metric_name"] == "test.acc" and row["error"] == ""
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 2 and all(r["attn"] == "mhsa@input" and "heads" in r["error"] for r in failed)
    summary = (sweep_dir / "summary.md").read_text()
    assert "Holm–Bonferroni" in summary and "resnet18/se" in summary and "failed" in summary
    assert all(int(r["test_size"]) > 0 and r["ci95_low"] for r in ok)
    # two epochs on 64 images: runs left at chance are flagged as collapsed (and listed), the others are not
    for row in ok:
        at_chance = float(row["metric"]) <= 0.19
        assert (row["collapsed"] == "True") == bool(row["collapse_reason"])
        assert not at_chance or ("at chance" in row["collapse_reason"] and f"`{row['run_id']}`" in summary)
    for name in ("metric_vs_macs.png", "metric_per_block.png", "curves.png"):
        data = (sweep_dir / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    plans = json.loads((sweep_dir / "sweep.json").read_text())["runs"]
    assert len(plans) == len(rows)
    by_config = {r.config: r for r in killed_and_resumed["result"].summary}
    se, none = by_config["resnet18/se"], by_config["resnet18/none"]
    assert len(se.values) == 2 and se.latency_ms > 0 and se.params > none.params
    assert se.verdict != "n/a" and by_config["resnet18/mhsa@input"].verdict == "failed"


def test_same_command_again_trains_nothing(killed_and_resumed):
    sweep_dir = killed_and_resumed["sweep_dir"]
    before = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("runs/*/metrics.json")}
    again = run_sweep(make_spec(SWEEP, {}), out=sweep_dir.parent, name="tiny", echo=False, retry_failed=False,
                      ort_latency=False)
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("runs/*/metrics.json")} == before
    assert [r.values for r in again.summary] == [r.values for r in killed_and_resumed["result"].summary]
    with pytest.raises(ConfigError, match="different sweep"):  # seed 0 dropped: refused before any training
        run_sweep(make_spec({**SWEEP, "seeds": "1,2"}, {}), out=sweep_dir.parent, name="tiny", echo=False)


def cost_row(summary: str, first_cell: str) -> str:
    """The line of summary.md's cost table (after the "## Cost" heading) whose first cell is ``first_cell``."""
    lines = summary.split("## Cost", 1)[1].splitlines()
    return next(line for line in lines if line.startswith(f"| {first_cell} | "))


def test_onnxruntime_latency_column_next_to_eager(killed_and_resumed, tmp_path, monkeypatch):
    """The tiny sweep re-reported with --ort-latency: the column is filled and labelled; a failed export reads n/a
    with its reason as a footnote instead of failing the report."""
    pytest.importorskip("onnxruntime", reason="needs the [export] extra")
    pytest.importorskip("onnxscript", reason="needs the [export] extra")
    import onnxruntime

    sweep_dir = tmp_path / "tiny"
    shutil.copytree(killed_and_resumed["sweep_dir"], sweep_dir, ignore=shutil.ignore_patterns("*.ckpt"))
    result = report_sweep(sweep_dir, ort_latency=True, echo=False)
    by_config = {r.config: r for r in result.summary}
    for config in ("resnet18/none", "resnet18/se"):
        assert by_config[config].ort_latency_ms > 0 and by_config[config].latency_ms > 0
    summary = (sweep_dir / "summary.md").read_text()
    assert "| latency ms | ort latency ms |" in cost_row(summary, "configuration")
    assert f"onnxruntime {onnxruntime.__version__}" in summary and "intra_op_num_threads = 1" in summary
    row = cost_row(summary, "resnet18/se")
    assert row.split(" | ")[4] == f"{by_config['resnet18/se'].ort_latency_ms:.2f}"

    def broken(*args, **kwargs):
        raise RuntimeError("no ONNX for you")

    monkeypatch.setattr("visattn.sweep.latency.ort_session", broken)
    (sweep_dir / "latency.json").unlink()
    result = report_sweep(sweep_dir, ort_latency=True, echo=False)
    assert all(r.ort_latency_ms is None for r in result.summary)
    summary = (sweep_dir / "summary.md").read_text()
    row = cost_row(summary, "resnet18/se")
    assert row.split(" | ")[4] == "n/a [1]" and float(row.split(" | ")[3]) > 0
    assert "[1] ort latency n/a: export failed: RuntimeError: no ONNX for you" in summary


def test_ray_executor_gives_the_same_numbers(killed_and_resumed, tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'visattn[sweep]')")
    spec = make_spec({**SWEEP, "attn": ["none", "se"], "seeds": [0]}, {})
    # as many threads per run as the local sweep's single worker had, so the arithmetic is the same
    result = run_sweep(spec, out=tmp_path, name="ray", executor="ray", cpus_per_run=1.0,
                       threads_per_run=available_cpus(), echo=False, ort_latency=False)
    local = {r["run_id"]: r for r in read_csv(killed_and_resumed["sweep_dir"] / "results.csv")}
    remote = read_csv(result.sweep_dir / "results.csv")
    assert len(remote) == 2 and all(r["status"] == "ok" for r in remote)
    for row in remote:
        assert row["metric"] == local[row["run_id"]]["metric"]
        losses = [json.loads((d / "runs" / row["run_id"] / "metrics.json").read_text())["test"]["loss"]
                  for d in (result.sweep_dir, killed_and_resumed["sweep_dir"])]
        assert losses[0] == pytest.approx(losses[1], rel=1e-6, abs=1e-7)


def test_detection_sweep_compares_map(tmp_path):
    train = {"task": "detect", "data": "shapes", "img_size": 64, "epochs": 1, "batch_size": 8, "num_workers": 0,
             "data_args": {"num_train": 16, "num_val": 8, "num_test": 8, "cache_dir": str(tmp_path / "cache")}}
    spec = make_spec({"backbone": "csp_n", "attn": ["none", "eca"], "seeds": [0], "train": train}, {})
    result = run_sweep(spec, out=tmp_path, name="det", echo=False, latency_threads=1, ort_latency=False)
    rows = read_csv(tmp_path / "det" / "results.csv")
    assert [(r["attn"], r["status"], r["metric_name"]) for r in rows] == [("none", "ok", "test.map"),
                                                                         ("eca", "ok", "test.map")]
    for row in rows:
        metrics = json.loads((tmp_path / "det" / "runs" / row["run_id"] / "metrics.json").read_text())
        assert float(row["metric"]) == metrics["test"]["map"] and metrics["task"] == "detect"
    eca = {r.config: r for r in result.summary}["csp_n/eca"]
    assert eca.params > {r.config: r for r in result.summary}["csp_n/none"].params and eca.latency_ms > 0
    assert "csp_n/eca" in (tmp_path / "det" / "summary.md").read_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_sweep_and_its_processes(tmp_path, signum):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**SWEEP, "attn": ["none"], "seeds": [0],
                                      "train": {**TRAIN, "epochs": 50, "limit": 256}}))
    cmd = [sys.executable, str(REPO / "tools" / "sweep.py"), "--config", str(config), "--out", str(tmp_path)]
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("tiny/runs/*/checkpoints/last.ckpt")):  # a run is training
            assert proc.poll() is None, (tmp_path / "log").read_text()
            assert time.monotonic() < deadline, "the run did not start in time"
            time.sleep(0.2)
        children = descendants(proc.pid)
        proc.send_signal(signum)  # to the sweep alone: its runs must stop too, not run to their end
        assert proc.wait(timeout=60) == 130
    assert children
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if alive(pid)]
    assert "run the same command again" in (tmp_path / "log").read_text()


def test_a_default_shared_by_every_configuration_is_noted_once(capsys):
    spec = make_spec({"attn": "none,se,eca", "train": {"epochs": 1}}, {})  # no lr or weight decay given
    expand(spec)
    lines = [line for line in capsys.readouterr().err.splitlines() if "default" in line]
    assert lines and len(lines) == len(set(lines))
    assert any("weight_decay" in line for line in lines)
