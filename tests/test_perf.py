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
    assert any(k.startswith("cpu:fp32:") and v["flops"] == 1e11 for k, v in table.items())
    again = perf.matmul_peak("fp32")
    assert again["cached"] and again["flops"] == 1e11 and calls == ["fp32"]
    bf16 = perf.matmul_peak("bf16")
    assert bf16["flops"] == 3e11 and calls == ["fp32", "bf16"]
    # a re-measurement on a busy machine does not lower the peak; a higher one replaces it
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, *, device, seconds: 5e10)
    assert perf.matmul_peak("fp32", refresh=True)["flops"] == 1e11
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, *, device, seconds: 2e11)
    assert perf.matmul_peak("fp32", refresh=True)["flops"] == 2e11
    assert perf.matmul_peak("fp32")["flops"] == 2e11


def test_peak_cache_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "elsewhere"))
    assert perf.cache_dir() == tmp_path / "elsewhere" / "visattn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert perf.cache_dir() == tmp_path / "home" / ".cache" / "visattn"


def test_real_matmul_peak_is_positive_and_rejects_unknown_dtype():
    assert perf.measure_matmul_peak("fp32", size=64, seconds=0.01) > 0
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        perf.measure_matmul_peak("int8", size=8, seconds=0.01)


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

    from visattn.cli import add_train_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    config = config_from_args(parser.parse_args(["--channels-last", "--compile", "--precision", "bf16-mixed"]))
    assert config.channels_last and config.compile and config.precision == "bf16-mixed"
    config = config_from_args(parser.parse_args([]))
    assert not config.channels_last and not config.compile


def test_speed_options_keep_state_dict_keys_and_outputs():
    from visattn.models.build import build_model
    from visattn.tasks.classify import ClassificationModule
    from visattn.train import apply_speed_options

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
    assert {"train/train_gflops_s", "train/mfu", "train/throughput_img_s"} <= set(trainer.callback_metrics)
    trainer.test(module, _loader(16, 8), verbose=False)
    # test runs under torch.inference_mode(); Lightning runs validation inside fit under torch.no_grad() (its
    # training epoch loop builds that loop with inference_mode=False), which is as fast for these models
    assert {mode for mode in module.modes} == {("val", False, False), ("test", True, False)}
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2  loss ")
    assert "acc " in lines[0] and "img/s" in lines[0] and "GFLOP/s" in lines[0] and "MFU" in lines[0]
    assert len(lines[0]) == len(lines[1])  # aligned columns
    history = throughput.history
    assert len(history) == 2
    # 32 images x 3 x 2 x 8 FLOPs over the epoch's training time, against a 1 MFLOP/s "peak"
    for stats in history:
        expected = 32 * 48 / stats["epoch_train_s"]
        assert stats["train_gflops_s"] == pytest.approx(expected / 1e9)
        assert stats["mfu"] == pytest.approx(expected / 1e6)
    ruler = throughput.summary()
    assert ruler["peak_gflops_s"] == pytest.approx(1e-3) and ruler["peak_dtype"] == "fp32"


def test_profile_training_reports_the_ruler_for_a_tiny_model(monkeypatch):
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, *, device, seconds: 1e9)
    ticks = iter(range(1000))
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 2))
    macs = count(model, input_size=(1, 3, 8, 8)).macs
    result = perf.profile_training(model, input_size=(4, 3, 8, 8), steps=3, warmup=1,
                                   clock=lambda: float(next(ticks)))  # every step takes one "second"
    assert result["step_ms"] == pytest.approx(1000.0) and result["img_s"] == pytest.approx(4.0)
    assert result["train_gflops_s"] == pytest.approx(4 * 6 * macs / 1e9)
    assert result["mfu"] == pytest.approx(4 * 6 * macs / 1e9)
    assert "MFU" in perf.training_report(result)
    bf16 = perf.profile_training(model, input_size=(2, 3, 8, 8), precision="bf16-mixed", steps=1, warmup=0)
    assert bf16["peak_dtype"] == "bf16" and bf16["img_s"] > 0


@pytest.mark.parametrize(("cpus", "expected"), [(1, 1), (2, 2), (64, 8)])
def test_sweep_runs_one_single_thread_run_per_core_by_default(monkeypatch, cpus, expected):
    from visattn.data import datamodule
    from visattn.sweep.cli import build_parser, default_workers

    monkeypatch.setattr(datamodule, "available_cpus", lambda: cpus)
    assert default_workers() == expected
    assert build_parser().parse_args([]).workers is None  # resolved to default_workers() when the sweep starts


@pytest.mark.parametrize(("flags", "expected"), [({"avx512_bf16"}, "bf16-mixed"), (set(), "32-true")])
def test_run_records_what_precision_auto_chose_and_why(tmp_path, monkeypatch, flags, expected):
    import yaml

    from visattn.train import train

    monkeypatch.setattr(perf, "cpu_flags", lambda cpuinfo=None: frozenset(flags))
    monkeypatch.setattr(perf, "measure_matmul_peak", lambda dtype, *, device, seconds: 1e9)
    config = make_config({}, dict(data="digits", img_size=16, epochs=1, batch_size=16, limit=32, num_workers=0,
                                  out=str(tmp_path), name="run", backbone_args={"base_width": 8}, accelerator="cpu"))
    assert config.precision == "auto"  # the default
    metrics = train(config)
    assert metrics["precision"] == expected and metrics["peak_dtype"] == ("bf16" if flags else "fp32")
    assert metrics["precision_reason"] == ("auto: CPU has avx512_bf16" if flags else
                                           "auto: CPU has none of amx_bf16, avx512_bf16")
    assert metrics["train_gflops_s"] > 0 and metrics["mfu"] > 0
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
