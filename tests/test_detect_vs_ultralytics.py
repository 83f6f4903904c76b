"""benchmarks/detect_vs_ultralytics.py without ultralytics: install message, curves, scoring, network guard."""

from __future__ import annotations

import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "detect_vs_ultralytics.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("detect_vs_ultralytics", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_missing_ultralytics_says_how_to_install_and_exits_2():
    code = ("import runpy, sys; sys.modules['ultralytics'] = None; sys.argv = ['detect_vs_ultralytics.py']; "
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr
    message = done.stderr.strip()
    assert "never a dependency of visattn" in message
    assert "pip install --no-deps ultralytics" in message and "python3 -m venv" in message
    assert len(message.splitlines()) == 1  # one paragraph


def test_ultralytics_is_not_a_dependency_of_visattn():
    assert "ultralytics" not in (REPO / "pyproject.toml").read_text().lower()


def test_curve_reading(bench):
    curve = [{"time_s": 10.0, "m": 0.1}, {"time_s": 20.0, "m": 0.5}, {"time_s": 30.0, "m": 0.4}]
    assert bench.value_at(curve, 5.0, "m") is None  # nothing finished yet
    assert bench.value_at(curve, 20.0, "m") == 0.5
    assert bench.value_at(curve, 29.0, "m") == 0.5  # the last finished epoch's model
    assert bench.value_at(curve, 99.0, "m") == 0.4
    assert bench.time_to_reach(curve, 0.45, "m") == 20.0
    assert bench.time_to_reach(curve, 0.6, "m") is None


def test_read_wallclock(bench, tmp_path):
    path = tmp_path / "wallclock.csv"
    assert bench.read_wallclock(path) == []
    path.write_text("epoch,time_s\n1,12.5\n2,25.0\n3,")  # the last line is being written
    assert bench.read_wallclock(path) == [(1, 12.5), (2, 25.0)]


def test_coco_score_perfect_and_empty(bench, tmp_path):
    pytest.importorskip("pycocotools")
    images = [{"id": 1, "file_name": "000001.png", "width": 160, "height": 160},
              {"id": 2, "file_name": "000002.png", "width": 160, "height": 160}]
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 40], "area": 1200, "iscrowd": 0},
                   {"id": 2, "image_id": 2, "category_id": 3, "bbox": [50, 60, 20, 20], "area": 400, "iscrowd": 0}]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": k, "name": str(k)} for k in (1, 2, 3)]}))
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in annotations]
    assert bench.coco_score(tmp_path, "val", perfect)["map"] == pytest.approx(1.0)
    wrong_class = [{**d, "category_id": 2} for d in perfect]
    assert bench.coco_score(tmp_path, "val", wrong_class)["map"] == pytest.approx(0.0)
    assert bench.coco_score(tmp_path, "val", [])["map"] == 0.0


def test_network_guard_refuses_and_counts_remote_only(bench):
    saved = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
    bench.BLOCKED.clear()
    try:
        bench.block_network()
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("example.org", 443)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(ConnectionRefusedError):
            sock.connect(("192.0.2.1", 443))  # TEST-NET-1: never reached, refused before any packet
        assert socket.getaddrinfo("localhost", 0)  # this machine stays reachable
        assert len(bench.BLOCKED) == 2 and bench.BLOCKED[0].startswith("dns example.org")
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = saved
        bench.BLOCKED.clear()


def test_report_pairs_each_run_with_its_partner(bench):
    def run(maps, times, test):
        curve = [{"epoch": k + 1, "time_s": t, "log_map": m, "coco_map": m} for k, (m, t) in
                 enumerate(zip(maps, times, strict=True))]
        return {"curve": curve, "final": {"val": {"map": max(maps)}, "test": {"map": test, "map50": 0.9}}}

    results = {"runs": {"visattn-s0": run([0.2, 0.6, 0.8], [40, 80, 120], 0.79),
                        "yolo26n": run([0.1, 0.5, 0.7], [50, 100, 118], 0.69)},
               "pairs": [{"visattn": "visattn-s0", "ultralytics": "yolo26n", "budget_s": 120.0}],
               "sizes": {"yolo26n": {"params": 2.5e6, "macs": 1.8e8, "ultralytics_info_params": 2.5e6,
                                     "ultralytics_info_gflops": 0.36}},
               "latency": {"yolo26n (export)": {"median_ms": 9.5, "min_ms": 9.0, "max_ms": 10.0}}}
    table = bench.build_report(results)
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if line.startswith("| visattn-s0 vs yolo26n")}
    assert "- / 0.200 / 0.600 / 0.800" in rows["visattn-s0"]  # at 30, 60, 90, 120 s
    assert "| 120 (of 0.700) |" in rows["visattn-s0"]  # first reaches yolo26n's best 0.7 in its 120 s epoch
    assert "not reached (of 0.800)" in rows["yolo26n"]
    assert "| yolo26n | 2.500 | 0.180 | 2.500 M params, 0.360 GFLOPs (= 0.180 G MACs) |" in table
    assert "| yolo26n (export) | 9.50 | 9.00-10.00 |" in table
