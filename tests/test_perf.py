"""The speed ruler (visattn.perf): FLOP arithmetic, the cached matmul peak, precision "auto", speed flags, eval mode."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch import nn

from visattn import perf
from visattn.complexity import count
from visattn.config import ConfigError, make_config
from visattn.tasks.common import EpochSummary, ThroughputMonitor


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch):
    """Every test here reads and writes its peak cache under tmp_path, never the user's ~/.cache."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg"


def test_training_flops_are_three_forwards_of_two_flops_per_mac():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5, bias=False))
    macs = count(model, input_size=(1, 3, 2, 2)).macs
    assert macs == 12 * 5
    assert perf.training_flops_per_image(macs) == 3 * 2 * 60
    # 100 images in 2 s at 360 FLOPs each
    assert perf.achieved_flops(images=100, seconds=2.0, macs_per_image=macs) == pytest.approx(100 * 360 / 2)
    assert perf.mfu(50.0, 200.0) == pytest.approx(0.25)
    assert perf.mfu(50.0, None) is None
    assert perf.achieved_flops(images=10, seconds=0.0, macs_per_image=macs) == 0.0


def test_precision_dtype():
    assert perf.precision_dtype("bf16-mixed") == "bf16" and perf.precision_dtype("bf16-true") == "bf16"
    assert perf.precision_dtype("16-mixed") == "fp16"
    assert perf.precision_dtype("32") == "fp32" and perf.precision_dtype("32-true") == "fp32"


def test_peak_is_measured_once_then_read_from_the_cache(cache_home, monkeypatch):
    calls = []

    def fake_measure(dtype, *, device, seconds):  # noqa: ANN001
        calls.append(dtype)
        return 1e11 if dtype == "fp32" else 3e11

    monkeypatch.setattr(perf, "measure_matmul_peak", fake_measure)
    first = perf.matmul_peak("fp32")
    assert first["flops"] == 1e11 and not first["cached"]
    files = list((cache_home / "visattn").glob("peak-*.json"))
    assert len(files) == 1
    table = json.loads(files[0].read_text())
    assert [v["flops"] for k, v in table.items() if ":cpu:fp32:" in k] == [1e11]
    again = perf.matmul_peak("fp32")
    assert again["cached"] and again["flops"] == 1e11 and calls == ["fp32"]
    bf16 = perf.matmul_peak("bf16")
    assert bf16["flops"] == 3e11 and calls == ["fp32", "bf16"]
    # a re-measurement replaces the stored value, lower or higher (a peak cached on a busy machine is put right
    # by measuring on a quiet one); the other dtype's entry is kept
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, *, device, seconds: 5e10)
    assert perf.matmul_peak("fp32", refresh=True)["flops"] == 5e10
    assert perf.matmul_peak("fp32")["flops"] == 5e10
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, *, device, seconds: 2e11)
    assert perf.matmul_peak("fp32", refresh=True)["flops"] == 2e11
    assert perf.matmul_peak("fp32")["flops"] == 2e11
    assert perf.matmul_peak("bf16")["flops"] == 3e11 and perf.matmul_peak("bf16")["cached"]


def test_peak_cache_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
    assert perf.cache_dir() == tmp_path / "elsewhere" / "visattn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert perf.cache_dir() == tmp_path / "home" / ".cache" / "visattn"


def test_real_matmul_peak_is_positive_and_rejects_unknown_dtype():
    assert perf.measure_matmul_peak("fp32", sizes=(32, 64), seconds=0.01) > 0
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        perf.measure_matmul_peak("int8", sizes=(8,), seconds=0.01)
    with pytest.raises(ValueError, match="at least one size"):
        perf.measure_matmul_peak("fp32", sizes=(), seconds=0.01)


def test_measured_peak_is_the_best_call_over_sizes_and_rounds(monkeypatch):
    """Every size is tried in every round: a slow burst (another process) at one size's turn does not hide it."""
    calls: list[int] = []
    now = [0.0]

    def clock() -> float:  # each call to torch.mm "takes" 1 s, except size 16 in round 2: 0.5 s
        return now[0]

    def fake_mm(a, b):  # noqa: ANN001, ANN202
        calls.append(a.shape[0])
        rounds_done = sum(1 for c in calls if c == 16)
        now[0] += 0.5 if (a.shape[0] == 16 and rounds_done == 3) else 1.0  # 1 warm-up call of each size first

    monkeypatch.setattr(torch, "mm", fake_mm)
    best = perf.measure_matmul_peak("fp32", sizes=(8, 16), seconds=0.0, rounds=3, clock=clock)
    assert calls == [8, 16] + [8, 16] * 3  # warm-ups, then one call per size per round (chunks of 0 s)
    assert best == pytest.approx(2 * 16**3 / 0.5)


def test_peak_cache_key_is_hardware_dtype_threads_and_torch():
    base = dict(device="cpu", threads=1, flags=frozenset({"avx2", "amx_bf16"}), cores=2, torch_version="2.9.0",
                name="Intel(R) Xeon(R) Processor")
    key = perf.peak_cache_key(perf.peak_identity("bf16", **base))
    assert key == perf.peak_cache_key(perf.peak_identity("bf16", **base))
    changed = [perf.peak_identity("fp32", **base)]
    for field, value in [("threads", 2), ("flags", frozenset({"avx2"})), ("cores", 4), ("torch_version", "2.10.0"),
                         ("name", "AMD EPYC")]:
        changed.append(perf.peak_identity("bf16", **{**base, field: value}))
    keys = [perf.peak_cache_key(identity) for identity in changed]
    assert key not in keys and len(set(keys)) == len(keys)
    # the same CPU model name on a host with other flags or cores gets another cache file too
    assert perf._cache_path(changed[2]) != perf._cache_path(perf.peak_identity("bf16", **base))
    assert perf._cache_path(changed[1]) == perf._cache_path(perf.peak_identity("bf16", **base))  # same hardware


def test_peak_cached_on_other_hardware_is_not_reused(monkeypatch):
    measured = iter([1e11, 2e11])
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, *, device, seconds: next(measured))
    monkeypatch.setattr(perf, "cpu_flags", lambda cpuinfo=None: frozenset({"avx2"}))
    assert perf.matmul_peak("fp32")["flops"] == 1e11
    monkeypatch.setattr(perf, "cpu_flags", lambda cpuinfo=None: frozenset({"avx2", "avx512f"}))
    assert perf.matmul_peak("fp32")["flops"] == 2e11
    monkeypatch.setattr(perf, "cpu_flags", lambda cpuinfo=None: frozenset({"avx2"}))
    assert perf.matmul_peak("fp32") == {**perf.matmul_peak("fp32"), "flops": 1e11, "source": "cache"}


def test_sweep_measures_once_before_its_runs_and_hands_the_peaks_over(monkeypatch):
    from visattn.sweep.execute import run_peaks

    calls: list[tuple[str, int]] = []

    def fake_measure(dtype, *, device, seconds):  # noqa: ANN001
        calls.append((dtype, torch.get_num_threads()))
        return 7e10

    monkeypatch.delenv(perf.NO_CPU_BF16_ENV, raising=False)  # the suite's setting (conftest): `auto` as on a user's CPU
    monkeypatch.setattr(perf, "measure_matmul_peak", fake_measure)
    monkeypatch.setattr(perf, "cpu_flags", lambda cpuinfo=None: frozenset({"amx_bf16"}))
    threads = torch.get_num_threads()
    peaks = run_peaks([{"precision": "32"}, {"precision": "auto"}, {"precision": "32", "accelerator": "cpu"}],
                      threads=1)
    assert sorted(calls) == [("bf16", 1), ("fp32", 1)] and torch.get_num_threads() == threads
    assert [(p["dtype"], p["threads"]) for p in peaks] == [("bf16", 1), ("fp32", 1)]
    # in a run (visattn.sweep.worker.child_main): the handed-over peak is used, nothing is measured or read
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, *, device, seconds: pytest.fail("measured"))
    cache_dir = perf.cache_dir
    monkeypatch.setattr(perf, "cache_dir", lambda: pytest.fail("cache read"))
    try:
        perf.use_peaks(peaks)
        torch.set_num_threads(1)
        in_run = perf.matmul_peak("bf16")
        assert in_run["flops"] == 7e10 and in_run["source"] == "sweep"
        assert "from sweep" in perf.describe_peak(in_run)
        torch.set_num_threads(2)  # another thread count (or another Ray node's hardware): not this peak
        monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, *, device, seconds: 9e10)
        monkeypatch.setattr(perf, "cache_dir", cache_dir)
        other = perf.matmul_peak("bf16")
        assert other["flops"] == 9e10 and other["source"] == "measured" and other["threads"] == 2
    finally:
        perf.use_peaks(None)
        torch.set_num_threads(threads)


def test_peak_share_reads_committed_old_metrics_and_new_ones():
    from pathlib import Path

    old = json.loads(next(Path(__file__).parents[1].glob(
        "benchmarks/results/cluttered-r18w32-blocks-v2/runs/resnet18-se-s0/metrics.json")).read_text())
    assert "mfu" in old and "matmul_peak_share" not in old  # written before the rename
    assert perf.peak_share(old) == pytest.approx(old["mfu"])
    assert perf.peak_share({"matmul_peak_share": 0.4, "palm_mfu": 0.1}) == 0.4
    assert perf.peak_share({"palm_mfu": 0.1}) is None and perf.peak_share({"mfu": None}) is None


def test_palm_mfu_only_where_a_datasheet_peak_is_known(monkeypatch):
    assert perf.theoretical_peak("bf16", "cpu") is None and perf.palm_mfu(1e12, "bf16", "cpu") is None
    for name, dtype, expected in [("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
                                  ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),
                                  ("NVIDIA H100 PCIe", "fp16", 756.5e12), ("NVIDIA L4", "fp32", 30.3e12),
                                  ("NVIDIA L40S", "bf16", 362.1e12), ("NVIDIA L40", "bf16", None),
                                  ("NVIDIA A10G", "bf16", None), ("Tesla T4", "bf16", None),
                                  ("NVIDIA GeForce RTX 4090", "bf16", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        peak = perf.theoretical_peak(dtype, torch.device("cuda", 0))
        assert (None if peak is None else peak[0]) == (None if expected is None else pytest.approx(expected)), name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-PCIE-40GB")
    assert perf.palm_mfu(156e12, "bf16", torch.device("cuda", 0)) == pytest.approx(0.5)


CPUINFO = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 avx512f {extra}\n"


@pytest.mark.parametrize(("extra", "expected"), [("avx512_bf16", "bf16-mixed"), ("amx_bf16 amx_tile", "bf16-mixed"),
                                                 ("", "32")])
def test_precision_auto_follows_cpu_flags(extra, expected):
    flags = perf.cpu_flags(CPUINFO.format(extra=extra))
    assert "avx512f" in flags
    chosen, reason = perf.resolve_precision("auto", flags=flags, cuda_available=False)
    assert chosen == expected
    assert ("has none" in reason) == (expected == "32")


def test_precision_auto_on_cuda_and_explicit_values():
    none = frozenset()
    assert perf.resolve_precision("auto", flags=none, cuda_available=True, cuda_bf16=True)[0] == "bf16-mixed"
    assert perf.resolve_precision("auto", flags=none, cuda_available=True, cuda_bf16=False)[0] == "32"
    # accelerator=cpu on a GPU machine: the CPU's flags decide
    assert perf.resolve_precision("auto", accelerator="cpu", flags=none, cuda_available=True,
                                  cuda_bf16=True)[0] == "32"
    assert perf.resolve_precision("16-mixed", flags=frozenset({"avx512_bf16"})) == ("16-mixed", "set explicitly")


def test_config_accepts_speed_flags_and_auto():
    config = make_config({}, {"channels_last": True, "compile": True, "precision": "auto"})
    assert config.channels_last is True and config.compile is True and config.precision == "auto"
    with pytest.raises(ConfigError, match="auto, 32, bf16-mixed"):
        make_config({}, {"precision": "fp8"})


def test_cli_flags_reach_the_config():
    import argparse

    from visattn.cli.train import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    config = config_from_args(parser.parse_args(["--channels-last", "--compile", "--precision", "bf16-mixed"]))
    assert config.channels_last and config.compile and config.precision == "bf16-mixed"
    config = config_from_args(parser.parse_args([]))
    assert not config.channels_last and not config.compile


def test_speed_options_keep_state_dict_keys_and_outputs():
    from visattn.models.build import build_model
    from visattn.tasks.classify import ClassificationModule
    from visattn.training import apply_speed_options

    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=3, img_size=16, backbone_args={"base_width": 8}).eval()
    x = torch.randn(2, 3, 16, 16)
    expected = model(x)
    keys = set(model.state_dict())
    module = ClassificationModule(model, num_classes=3, img_size=16)
    apply_speed_options(module, make_config({}, {"channels_last": True}))
    conv_weight = next(p for p in model.parameters() if p.ndim == 4)
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)
    assert set(model.state_dict()) == keys
    torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


class _Tiny(L.LightningModule):
    """A linear classifier that records whether validation/test ran under inference mode."""

    def __init__(self) -> None:
        super().__init__()
        self.model = nn.Linear(4, 2)
        self.complexity = {"macs": 8}
        self.modes: list[tuple[str, bool, bool]] = []

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        loss = nn.functional.cross_entropy(self.model(batch[0]), batch[1])
        self.log("train/loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.modes.append(("val", torch.is_inference_mode_enabled(), torch.is_grad_enabled()))
        self.log("val/acc", (self.model(batch[0]).argmax(1) == batch[1]).float().mean())

    def test_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.modes.append(("test", torch.is_inference_mode_enabled(), torch.is_grad_enabled()))

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n: int, batch_size: int) -> torch.utils.data.DataLoader:
    data = torch.utils.data.TensorDataset(torch.randn(n, 4), torch.randint(0, 2, (n,)))
    return torch.utils.data.DataLoader(data, batch_size=batch_size)


def test_ruler_in_epoch_line_and_logs_and_eval_without_grad(capsys, monkeypatch):
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, *, device, seconds: 1e6)
    throughput = ThroughputMonitor()
    summary = EpochSummary(throughput, monitor="val/acc")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[throughput, summary],
                        num_sanity_val_steps=0)
    module = _Tiny()
    trainer.fit(module, _loader(32, 8), _loader(16, 8))
    assert {"train/train_gflops_s", "train/matmul_peak_share", "train/throughput_img_s"} <= set(
        trainer.callback_metrics)
    assert "train/palm_mfu" not in trainer.callback_metrics  # no datasheet peak for a CPU
    trainer.test(module, _loader(16, 8), verbose=False)
    # test runs under torch.inference_mode(); Lightning runs validation inside fit under torch.no_grad() (its
    # training epoch loop builds that loop with inference_mode=False), which is as fast for these models
    assert {mode for mode in module.modes} == {("val", False, False), ("test", True, False)}
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  train loss ")  # issue 23: says what it shows
    assert "val acc " in lines[0] and "ETA" in lines[0]
    assert "img/s" in lines[0] and "GFLOP/s" in lines[0] and "of mm peak" in lines[0]
    assert len(lines[0]) == len(lines[1])  # aligned columns
    history = throughput.history
    assert len(history) == 2
    # 32 images x 3 x 2 x 8 FLOPs over the epoch's training time, against a 1 MFLOP/s "peak"
    for stats in history:
        expected = 32 * 48 / stats["epoch_train_s"]
        assert stats["train_gflops_s"] == pytest.approx(expected / 1e9)
        assert stats["matmul_peak_share"] == pytest.approx(expected / 1e6)
    ruler = throughput.summary()
    assert ruler["peak_gflops_s"] == pytest.approx(1e-3) and ruler["peak_dtype"] == "fp32"
    assert ruler["peak_denominator"].startswith("torch.mm peak measured on ") and ruler["palm_mfu"] is None


def test_profile_training_reports_the_ruler_for_a_tiny_model(monkeypatch):
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, *, device, seconds: 1e9)
    ticks = iter(range(1000))
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    macs = count(model, input_size=(1, 3, 8, 8)).macs
    result = perf.profile_training(model, input_size=(4, 3, 8, 8), steps=3, warmup=1,
                                   clock=lambda: float(next(ticks)))  # every step takes one "second"
    assert result["step_ms"] == pytest.approx(1000.0) and result["img_s"] == pytest.approx(4.0)
    assert result["train_gflops_s"] == pytest.approx(4 * 6 * macs / 1e9)
    assert result["matmul_peak_share"] == pytest.approx(4 * 6 * macs / 1e9) and result["palm_mfu"] is None
    assert "of the fp32 torch.mm peak measured here" in perf.training_report(result)
    bf16 = perf.profile_training(model, input_size=(2, 3, 8, 8), precision="bf16-mixed", steps=1, warmup=0)
    assert bf16["peak_dtype"] == "bf16" and bf16["img_s"] > 0


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 2), (64, 8)])
def test_sweep_runs_one_single_thread_run_per_core_by_default(monkeypatch, cpus, expected):
    from visattn.cli.sweep import build_parser
    from visattn.sweep import execute
    from visattn.sweep.execute import default_workers

    monkeypatch.setattr(execute, "available_cpus", lambda: cpus)  # the name execute.py imported
    assert default_workers() == expected
    assert build_parser().parse_args([]).workers is None  # resolved to default_workers() when the sweep starts


@pytest.mark.parametrize(("flags", "expected"), [({"avx512_bf16"}, "bf16-mixed"), (set(), "32-true")])
def test_run_records_what_precision_auto_chose_and_why(tmp_path, monkeypatch, flags, expected):
    import yaml

    from visattn.training import train

    monkeypatch.delenv(perf.NO_CPU_BF16_ENV, raising=False)  # the suite's setting (conftest): this test is about auto
    monkeypatch.setattr(perf, "cpu_flags", lambda cpuinfo=None: frozenset(flags))
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, *, device, seconds: 1e9)
    config = make_config({}, dict(data="digits", img_size=16, epochs=1, batch_size=16, limit=32, num_workers=0,
                                  out=str(tmp_path), name="run", backbone_args={"base_width": 8}, accelerator="cpu"))
    assert config.precision == "auto"  # the default
    metrics = train(config)
    assert metrics["precision"] == expected and metrics["peak_dtype"] == ("bf16" if flags else "fp32")
    assert metrics["precision_reason"] == ("auto: CPU has avx512_bf16" if flags else
                                           "auto: CPU has none of amx_bf16, avx512_bf16")
    assert metrics["train_gflops_s"] > 0 and metrics["matmul_peak_share"] > 0 and "mfu" not in metrics
    assert metrics["peak_denominator"].startswith("torch.mm peak measured on ")
    assert metrics["palm_mfu"] is None and metrics["palm_mfu_denominator"] is None
    hparams = yaml.safe_load((tmp_path / "run" / "logs" / "hparams.yaml").read_text())
    assert hparams["precision"] == expected and hparams["precision_reason"] == metrics["precision_reason"]


def test_out_dir_made_by_a_concurrent_run_is_not_an_error(tmp_path, monkeypatch):
    """Sweeps now start one run per core at once; both may find ``runs/`` missing and race to create it."""
    from pathlib import Path

    from visattn.rundir import check_out_dir

    real_mkdir = Path.mkdir

    def racing_mkdir(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        real_mkdir(self)  # the other run wins the race ...
        raise FileExistsError(17, "File exists", str(self))  # ... so ours finds it there

    monkeypatch.setattr(Path, "mkdir", racing_mkdir)
    assert check_out_dir(tmp_path / "sweep" / "runs") == []  # nothing of ours to remove on failure
    assert (tmp_path / "sweep" / "runs").is_dir()


def test_amx_bf16_hint_names_the_onednn_bug_only_where_it_applies():
    from visattn.perf import amx_bf16_hint

    amx = frozenset({"avx512f", "amx_bf16", "amx_tile"})
    hint = amx_bf16_hint("bf16-mixed", "cpu", flags=amx, environ={})
    assert "oneDNN#5717" in hint and "--precision 32" in hint and "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16" in hint
    assert amx_bf16_hint("32-true", "cpu", flags=amx, environ={}) == ""
    assert amx_bf16_hint("bf16-mixed", "cuda", flags=amx, environ={}) == ""
    assert amx_bf16_hint("bf16-mixed", "cpu", flags=frozenset({"avx512_bf16"}), environ={}) == ""
    assert amx_bf16_hint("bf16-mixed", "cpu", flags=amx, environ={"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == ""


def test_the_no_cpu_bf16_variable_makes_auto_choose_fp32(monkeypatch):
    monkeypatch.setenv(perf.NO_CPU_BF16_ENV, "1")
    monkeypatch.setattr(perf, "cpu_flags", lambda cpuinfo=None: frozenset({"amx_bf16"}))
    assert perf.resolve_precision("auto", cuda_available=False) == ("32", "auto: VISATTN_NO_CPU_BF16 is set")
    monkeypatch.setenv(perf.NO_CPU_BF16_ENV, "0")
    assert perf.resolve_precision("auto", cuda_available=False)[0] == "bf16-mixed"
