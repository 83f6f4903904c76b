"""Multi-node launches: only global rank 0 sets up the run directory; every launcher's rank variable counts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from visattn.config import RANK_VARIABLES, ConfigError, global_rank, notice
from visattn.training import is_launched_child

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_VARIABLES = (*RANK_VARIABLES, "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_LOCALID", "SLURM_NODEID",
                    "SLURM_NTASKS", "WORLD_SIZE")


@pytest.fixture
def clean_env(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(("env", "child"), [
    ({}, False),  # a plain run
    ({"LOCAL_RANK": "1"}, True),  # Lightning's launcher: the second GPU of node 0
    ({"NODE_RANK": "1"}, True),  # Lightning's launcher on node 1, before it starts that node's other processes
    ({"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"}, False),  # torchrun, node 0
    ({"RANK": "1", "LOCAL_RANK": "0", "GROUP_RANK": "1"}, True),  # torchrun, node 1: LOCAL_RANK is 0 there
    # srun: one task per GPU; task 2 is the first process of node 1 (SLURM_LOCALID 0, no NODE_RANK)
    ({"SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_NTASKS": "4"}, True),
    ({"SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS": "4"}, False),
    ({"SLURM_PROCID": "1", "RANK": "0"}, False),  # srun torchrun: SLURM numbers the nodes, RANK the processes
    ({"OMPI_COMM_WORLD_RANK": "3"}, True),  # mpirun (Open MPI)
    ({"PMI_RANK": "0"}, False),  # MPICH / Intel MPI
])
def test_only_global_rank_zero_sets_up(clean_env, env, child):
    for name, value in env.items():
        clean_env.setenv(name, value)
    assert is_launched_child() is child
    assert (global_rank() != 0) is child


def test_bad_rank_variable_is_named(clean_env):
    clean_env.setenv("SLURM_PROCID", "two")
    with pytest.raises(ConfigError, match="SLURM_PROCID='two' is not a process rank"):
        global_rank()


@pytest.mark.parametrize(("env", "shown"), [
    ({}, True), ({"RANK": "0"}, True), ({"RANK": "1"}, False), ({"SLURM_PROCID": "1"}, False),
    ({"OMPI_COMM_WORLD_RANK": "2"}, False), ({"LOCAL_RANK": "1"}, False), ({"SLURM_PROCID": "1", "RANK": "0"}, True),
])
def test_a_notice_is_printed_by_global_rank_zero_alone(clean_env, capsys, env, shown):
    """The notes of the defaults a config chose appear once per run, not once per process of every launcher."""
    for name, value in env.items():
        clean_env.setenv(name, value)
    notice("visattn: a note")
    assert ("a note" in capsys.readouterr().err) is shown


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TINY = ["--backbone", "resnet18", "--attn", "se", "--set", "backbone_args.base_width=8", "--limit", "64", "--epochs",
        "1", "--batch-size", "16", "--num-workers", "0", "--accelerator", "cpu", "--strategy", "ddp",
        "--precision", "32"]


def run_in_tty(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Run ``cmd`` with a pseudo-terminal as stdout/stderr (so training shows its progress bar); kill its whole
    process group on timeout. Returns (exit status, None when killed; output)."""
    import pty
    import signal
    import threading

    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed with the process
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = None
    reader.join(5)
    os.close(master)
    return code, b"".join(chunks).decode(errors="replace")[-3000:]


def test_two_nodes_on_localhost_make_one_run_that_matches_one_node(tmp_path):
    """torchrun --nnodes 2 (1 process each, gloo) vs Lightning's own 2-process DDP on one node, same seed: both
    nodes finish, one run directory, and the same test metrics (same world size: the same shards and all-reduces).

    The two nodes run on a terminal (progress bar), the one-node run without one (per-epoch lines)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    port = free_port()
    results: dict[int, tuple[int | None, str]] = {}

    def node(rank: int) -> None:
        results[rank] = run_in_tty(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--node-rank",
             str(rank), "--master-addr", "127.0.0.1", "--master-port", str(port), str(ROOT / "tools/train.py"), *TINY,
             "--num-nodes", "2", "--devices", "1", "--out", str(tmp_path / "runs"), "--name", "two-nodes"],
            env, timeout=300)

    import threading

    threads = [threading.Thread(target=node, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[0][0], results[1][0]] == [0, 0], results
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["two-nodes"]
    # the one-node run without a terminal (as under SLURM or CI): the per-epoch line is printed, and reading the
    # epoch metrics is a collective every rank must join (rank 0 alone used to wait for ever)
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), *TINY, "--devices", "2",
                               "--out", str(tmp_path / "runs"), "--name", "one-node"], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"2-process DDP without a terminal did not finish: {err}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "epoch 1/1" in proc.stdout
    two_nodes = json.loads((tmp_path / "runs/two-nodes/metrics.json").read_text())
    one_node = json.loads((tmp_path / "runs/one-node/metrics.json").read_text())
    for key, value in one_node["test"].items():
        assert two_nodes["test"][key] == pytest.approx(value, abs=1e-4), key
