"""A ruler for training speed: training FLOPs per image, achieved FLOP/s, and MFU against this machine's matmul peak.

Why a measured peak and not a datasheet one: a shared or virtualised CPU (2 cores of a cloud EPYC, say) reaches a
fraction of the vendor's number, and what a user can act on is "how far is my step from what ``torch.mm`` reaches
here". The peak is measured once per (CPU model, device, dtype, threads) and cached per user in
``$XDG_CACHE_HOME/visattn/peak-<cpu hash>.json`` (default ``~/.cache``); ``refresh=True`` measures again.

Convention (as in :mod:`visattn.complexity`): FLOPs = 2 x MACs; a training step costs 3 x the forward FLOPs
(forward, backward to activations, backward to weights), the usual estimate for MFU. Uncounted O(elements) work
(norms, activations, pooling) is left out, so MFU is the share of the matmul peak the counted arithmetic reaches.

``resolve_precision`` picks the run's precision for ``precision: auto`` and says why (recorded in metrics.json).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TRAIN_FLOPS_PER_FORWARD",
    "achieved_flops",
    "cache_dir",
    "cpu_flags",
    "cpu_model",
    "matmul_peak",
    "measure_matmul_peak",
    "mfu",
    "precision_dtype",
    "profile_training",
    "resolve_precision",
    "training_flops_per_image",
]

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (activations) + backward (weights)
# CPU flags that give bf16 matmuls native arithmetic (AMX tiles on Intel Sapphire Rapids+, AVX512-BF16 on
# Cooper Lake / AMD Zen 4+); without them oneDNN emulates bf16 and autocast is usually slower than fp32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str) -> str:
    """The matmul dtype a Lightning precision string computes in: ``"bf16"``, ``"fp16"`` or ``"fp32"``."""
    text = str(precision)
    if text.startswith("bf16"):
        return "bf16"
    if text.startswith("16"):
        return "fp16"
    return "fp32"


def training_flops_per_image(macs_per_image: int | float) -> float:
    """Training FLOPs for one image from the forward MACs of one image: 2 FLOPs per MAC, x3 for the backward."""
    return TRAIN_FLOPS_PER_FORWARD * 2 * float(macs_per_image)


def achieved_flops(*, images: int, seconds: float, macs_per_image: int | float) -> float:
    """FLOP/s a training loop reached: ``images`` trained in ``seconds`` (wall time, data waits included)."""
    if seconds <= 0:
        return 0.0
    return images * training_flops_per_image(macs_per_image) / seconds


def mfu(flops_per_s: float, peak_flops_per_s: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s as a share of the measured peak (None when no peak is known)."""
    if not peak_flops_per_s:
        return None
    return flops_per_s / peak_flops_per_s


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU feature flags (Linux /proc/cpuinfo ``flags`` line); empty where the OS does not say."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cache_dir() -> Path:
    """Per-user cache folder: ``$XDG_CACHE_HOME/visattn`` or ``~/.cache/visattn``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "visattn"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def _cache_path(device: torch.device) -> Path:
    digest = hashlib.sha1(_device_name(device).encode()).hexdigest()[:12]
    return cache_dir() / f"peak-{digest}.json"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(dtype: str = "fp32", *, device: str | torch.device = "cpu", size: int = 2048,
                        seconds: float = 1.0, clock: Callable[[], float] = time.perf_counter) -> float:
    """FLOP/s of ``torch.mm`` on two ``size`` x ``size`` matrices, best of short timed chunks over ~``seconds``.

    The best chunk, not the mean: on a shared machine the slow chunks are other processes, not the hardware.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; valid choices: {', '.join(_DTYPES)}")
    device = torch.device(device)
    a = torch.randn(size, size, device=device).to(_DTYPES[dtype])
    b = torch.randn(size, size, device=device).to(_DTYPES[dtype])
    flops = 2 * size**3
    torch.mm(a, b)  # warm-up: kernel selection, page faults
    _sync(device)
    rates: list[float] = []
    deadline = clock() + seconds
    while clock() < deadline or len(rates) < 3:
        start = clock()
        torch.mm(a, b)
        _sync(device)
        rates.append(flops / max(clock() - start, 1e-12))
    return max(rates)


def _peak_key(device: torch.device, dtype: str, threads: int) -> str:
    return f"{device.type}:{dtype}:{threads if device.type == 'cpu' else 0}t:torch{torch.__version__}"


def matmul_peak(dtype: str = "fp32", *, device: str | torch.device = "cpu", refresh: bool = False,
                seconds: float = 1.0) -> dict[str, Any]:
    """The cached matmul peak for ``dtype`` on ``device`` at the current torch thread count; measured if missing.

    Measured on a busy machine the peak comes out low (and MFU high); ``refresh=True`` (``tools/profile_model.py
    --remeasure-peak``) measures again and keeps the higher value.

    Returns ``{"flops": ..., "dtype", "device_name", "threads", "measured_at", "cached": bool}``. A cache that
    cannot be read or written (read-only home) is ignored: the peak is then measured again next time.
    """
    device = torch.device(device)
    threads = torch.get_num_threads()
    key = _peak_key(device, dtype, threads)
    path = _cache_path(device)
    table: dict[str, Any] = {}
    try:
        table = json.loads(path.read_text())
        if not isinstance(table, dict):
            table = {}
    except (OSError, ValueError):
        table = {}
    if not refresh and isinstance(table.get(key), dict) and table[key].get("flops"):
        return {**table[key], "cached": True}
    flops = measure_matmul_peak(dtype, device=device, seconds=seconds)
    old = table.get(key) if isinstance(table.get(key), dict) else {}
    if refresh and float(old.get("flops") or 0) > flops:
        return {**old, "cached": True}  # a peak is a maximum: a busier re-measurement does not lower it
    entry = {"flops": flops, "dtype": dtype, "device_name": _device_name(device), "threads": threads,
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    table[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=2))
        os.replace(tmp, path)
    except OSError:
        pass
    return {**entry, "cached": False}


def resolve_precision(precision: str, *, accelerator: str = "auto", flags: frozenset[str] | None = None,
                      cuda_available: bool | None = None, cuda_bf16: bool | None = None) -> tuple[str, str]:
    """``(precision, reason)``: ``auto`` becomes bf16-mixed where bf16 matmuls have hardware support, else 32.

    CUDA (when the accelerator may use it): bf16-mixed if ``torch.cuda.is_bf16_supported()``. CPU: bf16-mixed
    with AMX-BF16 or AVX512-BF16 in /proc/cpuinfo's flags. Anything else: 32. An explicit precision is kept.
    ``flags``/``cuda_*`` are for tests; by default they are read from this machine.
    """
    if precision != "auto":
        return precision, "set explicitly"
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if cuda_available and accelerator in ("auto", "gpu", "cuda"):
        if cuda_bf16 is None:
            cuda_bf16 = torch.cuda.is_bf16_supported()
        if cuda_bf16:
            return "bf16-mixed", "auto: CUDA device supports bf16"
        return "32", "auto: CUDA device without bf16 support"
    found = sorted((cpu_flags() if flags is None else flags) & set(BF16_CPU_FLAGS))
    if found:
        return "bf16-mixed", f"auto: CPU has {', '.join(found)}"
    return "32", f"auto: CPU has none of {', '.join(BF16_CPU_FLAGS)}"


def _output_loss(output: Any) -> torch.Tensor:
    """A scalar that depends on every output tensor: the backward then costs what a real loss's backward costs."""
    if isinstance(output, torch.Tensor):
        return output.float().mean()
    if isinstance(output, dict):
        output = list(output.values())
    return sum(_output_loss(item) for item in output)


def profile_training(model: torch.nn.Module, *, input_size: tuple[int, ...], precision: str = "32",
                     steps: int = 5, warmup: int = 2, device: str | torch.device = "cpu",
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time ``steps`` training steps (forward, loss, backward, AdamW) of ``model`` on random input of
    ``input_size`` and report what a training run's epoch line reports: images/s, GFLOP/s and MFU.

    Detectors are stepped through ``forward_raw`` when they have one (the training path, without decoding).
    ``precision`` is a Lightning precision string; bf16/fp16 run under ``torch.autocast``. The model is left
    in train mode with its weights changed: profile a copy if you need it afterwards.
    """
    from visattn.complexity import count

    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    device = torch.device(device)
    dtype = precision_dtype(precision)
    macs = count(model, input_size=(1, *input_size[1:]), device=device).macs
    model = model.to(device).train()
    forward = getattr(model, "forward_raw", model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    images = torch.randn(*input_size, device=device)
    autocast = torch.autocast(device.type, dtype=_DTYPES[dtype], enabled=dtype != "fp32")
    times: list[float] = []
    for index in range(warmup + steps):
        start = clock()
        with autocast:
            loss = _output_loss(forward(images))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if index >= warmup:
            times.append(clock() - start)
    step = statistics.median(times)
    flops = achieved_flops(images=input_size[0], seconds=step, macs_per_image=macs)
    peak = matmul_peak("fp32" if dtype == "fp16" and device.type == "cpu" else dtype, device=device)
    return {"step_ms": 1e3 * step, "step_ms_min": 1e3 * min(times), "step_ms_max": 1e3 * max(times),
            "img_s": input_size[0] / step, "train_gflops_s": flops / 1e9, "mfu": mfu(flops, peak["flops"]),
            "peak_gflops_s": peak["flops"] / 1e9, "peak_dtype": peak["dtype"], "macs_per_image": macs,
            "train_flops_per_image": training_flops_per_image(macs), "precision": precision, "steps": steps}


def training_report(result: dict[str, Any]) -> str:
    """One paragraph of :func:`profile_training`'s figures, for ``visattn profile``."""
    return (f"training step ({result['precision']}, {result['steps']} timed steps): median {result['step_ms']:.1f} ms "
            f"(min {result['step_ms_min']:.1f}, max {result['step_ms_max']:.1f}), {result['img_s']:.1f} img/s, "
            f"{result['train_flops_per_image'] / 1e9:.3f} GFLOPs/image (3 x forward), "
            f"{result['train_gflops_s']:.1f} GFLOP/s = MFU {100 * (result['mfu'] or 0):.1f}% of the "
            f"{result['peak_dtype']} matmul peak {result['peak_gflops_s']:.0f} GFLOP/s on {cpu_model()}")


def median_spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of repeated measurements, for tables that show the spread."""
    return statistics.median(values), min(values), max(values)
