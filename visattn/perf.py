"""A ruler for training speed: training FLOPs per image, achieved FLOP/s, and two shares of it.

- ``matmul_peak_share``: achieved FLOP/s over the ``torch.mm`` rate *measured on this machine* for the run's dtype
  and thread count. Why a measured peak: a shared or virtualised CPU reaches a fraction of any datasheet number,
  and what a user can act on is "how far is my step from what ``torch.mm`` reaches here". This is not PaLM's MFU,
  so it does not carry that name (metrics.json before this ruler called it ``mfu``: :func:`peak_share` reads both).
- ``palm_mfu``: PaLM-style model FLOPs utilisation, achieved over the hardware's theoretical dense peak, reported
  only where that peak is known (a small table of data-centre GPUs, :data:`THEORETICAL_PEAKS`); None on CPUs.

The measured peak is the best rate over several matrix sizes and repeated rounds (:data:`PEAK_SIZES`): a burst of
load from another process slows some chunks, and the cache-heavy large sizes suffer most, so the best chunk over
sizes and rounds is what the hardware does. It is cached per user in ``$XDG_CACHE_HOME/visattn/peak-<hardware
hash>.json`` (default ``~/.cache``), keyed on what determines it (:func:`peak_identity`): the CPU's model, flags
and core count (or the GPU's name), the dtype, the torch thread count and the torch version. ``refresh=True``
(``profile --remeasure-peak``) measures again and *replaces* the stored value. A sweep measures the peak once
before it starts its workers and hands it to them (:func:`use_peaks`), so no run measures while another trains.

Convention (as in :mod:`visattn.complexity`): FLOPs = 2 x MACs; a training step costs 3 x the forward FLOPs
(forward, backward to activations, backward to weights), the usual estimate for MFU. Uncounted O(elements) work
(norms, activations, pooling) is left out, so the share is that of the counted arithmetic.

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

from visattn.errors import BadValueError
from visattn.paths import cache_dir

__all__ = [
    "PEAK_SIZES",
    "THEORETICAL_PEAKS",
    "TRAIN_FLOPS_PER_FORWARD",
    "achieved_flops",
    "cache_dir",
    "cpu_flags",
    "cpu_model",
    "describe_peak",
    "matmul_peak",
    "measure_matmul_peak",
    "mfu",
    "palm_mfu",
    "peak_cache_key",
    "peak_identity",
    "peak_share",
    "peaks_for_runs",
    "precision_dtype",
    "profile_training",
    "resolve_precision",
    "theoretical_peak",
    "training_flops_per_image",
    "use_peaks",
]

TRAIN_FLOPS_PER_FORWARD = 3  # forward + backward (activations) + backward (weights)
# CPU flags that give bf16 matmuls native arithmetic (AMX tiles on Intel Sapphire Rapids+, AVX512-BF16 on
# Cooper Lake / AMD Zen 4+); without them oneDNN emulates bf16 and autocast is usually slower than fp32.
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
# Set (to anything but "0") to make `auto` choose fp32 on this machine's CPU: a way round oneDNN's bf16 kernel bugs
# (README, "Known problem"); the test suite sets it.
NO_CPU_BF16_ENV = "VISATTN_NO_CPU_BF16"
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PEAK_SIZES = (256, 512, 1024, 2048)  # square torch.mm sizes whose best rate is the measured peak
# Theoretical dense (no sparsity) peaks in TFLOP/s from NVIDIA's datasheets, by a substring of
# torch.cuda.get_device_name(); fp32 is the plain (non-TF32) rate, what torch's fp32 matmuls use by default.
# First match wins, so the more specific names come first.
THEORETICAL_PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 NVL", {"fp32": 60.0, "bf16": 835.0, "fp16": 835.0}),
    ("H100 PCIe", {"fp32": 51.2, "bf16": 756.5, "fp16": 756.5}),
    ("H100", {"fp32": 66.9, "bf16": 989.4, "fp16": 989.4}),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("A100", {"fp32": 19.5, "bf16": 312.0, "fp16": 312.0}),
    ("L40S", {"fp32": 91.6, "bf16": 362.1, "fp16": 362.1}),
    ("L40", {}),  # not in this table: no MFU rather than another card's numbers
    ("L4", {"fp32": 30.3, "bf16": 121.0, "fp16": 121.0}),
    ("A10G", {}),
    ("A10", {"fp32": 31.2, "bf16": 125.0, "fp16": 125.0}),
    ("V100", {"fp32": 15.7, "fp16": 125.0}),
    ("T4", {"fp32": 8.1, "fp16": 65.0}),
)
_PRESET_PEAKS: dict[str, dict[str, Any]] = {}  # cache key -> entry, handed over by a sweep (use_peaks)


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
    """Achieved FLOP/s as a share of a peak (None when no peak is known). Against the measured matmul peak this
    is ``matmul_peak_share``; against a datasheet peak (:func:`theoretical_peak`) it is PaLM's MFU."""
    if not peak_flops_per_s:
        return None
    return flops_per_s / peak_flops_per_s


def theoretical_peak(dtype: str, device: str | torch.device = "cpu") -> tuple[float, str] | None:
    """``(FLOP/s, device name)``: the datasheet dense peak of ``device`` for ``dtype`` (:data:`THEORETICAL_PEAKS`),
    or None where it is not known (every CPU: a VM's share of a socket has no datasheet number)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for pattern, peaks in THEORETICAL_PEAKS:
        if pattern in name:
            return (peaks[dtype] * 1e12, name) if dtype in peaks else None
    return None


def palm_mfu(flops_per_s: float, dtype: str, device: str | torch.device = "cpu") -> float | None:
    """PaLM-style MFU: achieved FLOP/s over the theoretical dense peak, where :func:`theoretical_peak` knows it."""
    peak = theoretical_peak(dtype, device)
    return None if peak is None else flops_per_s / peak[0]


def peak_share(metrics: dict[str, Any]) -> float | None:
    """The share of the measured matmul peak from a metrics.json (or epoch stats) mapping, old or new.

    Runs written before the ruler was renamed stored it as ``mfu`` (with no ``matmul_peak_share`` key); the
    newer ``palm_mfu`` is a different quantity and is never read here.
    """
    value = metrics.get("matmul_peak_share", metrics.get("mfu"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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


def amx_bf16_hint(precision: str, device_type: str, *, flags: frozenset[str] | None = None,
                  environ: dict[str, str] | None = None) -> str:
    """A sentence for a non-finite loss under bf16 on a CPU whose oneDNN uses AMX tiles, else ``""``.

    oneDNN's AMX bf16 kernels can leak memory past a row whose reduction length is not a multiple of 32 into
    other outputs (uxlfoundation/oneDNN#5717, in the oneDNN 3.12 that torch 2.14 ships); small channel counts hit
    it and a loss can turn NaN without the model being at fault. Capping oneDNN at AVX512-BF16 avoids those kernels.
    """
    environ = os.environ if environ is None else environ
    flags = cpu_flags() if flags is None else flags
    if device_type != "cpu" or precision_dtype(precision) != "bf16" or "amx_bf16" not in flags:
        return ""
    if environ.get("ONEDNN_MAX_CPU_ISA", "").upper() not in ("", "ALL", "DEFAULT"):
        return ""
    return (" This CPU runs bf16 on AMX tiles, whose oneDNN kernels have a known bug that can produce NaN with "
            "channel counts that are not multiples of 32 (uxlfoundation/oneDNN#5717): if the same run trains "
            "with --precision 32, or with the environment variable ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16, the "
            "model is not at fault.")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def peak_identity(dtype: str, *, device: str | torch.device = "cpu", threads: int | None = None,
                  flags: frozenset[str] | None = None, cores: int | None = None,
                  torch_version: str | None = None, name: str | None = None) -> dict[str, Any]:
    """What a measured matmul peak depends on: the hardware (a CPU's model name, feature flags and core count, or
    a GPU's name), the dtype, the torch thread count (CPU) and the torch version (its kernels).

    The keyword arguments override what is read from this machine (for tests and for a sweep preparing the
    peaks of its workers).
    """
    device = torch.device(device)
    identity: dict[str, Any] = {"device": device.type, "name": name or _device_name(device), "dtype": dtype,
                                "torch": str(torch_version or torch.__version__)}
    if device.type == "cpu":
        identity["flags"] = sorted(cpu_flags() if flags is None else flags)
        identity["cores"] = cores if cores is not None else (os.cpu_count() or 1)
        identity["threads"] = threads if threads is not None else torch.get_num_threads()
    return identity


def _hardware_digest(identity: dict[str, Any]) -> str:
    hardware = {k: identity.get(k) for k in ("device", "name", "flags", "cores")}
    return hashlib.sha1(json.dumps(hardware, sort_keys=True).encode()).hexdigest()[:12]


def peak_cache_key(identity: dict[str, Any]) -> str:
    """The cache key of a :func:`peak_identity`: a hash of the hardware, then dtype, threads and torch version."""
    threads = identity.get("threads", 0)
    return f"{_hardware_digest(identity)}:{identity['device']}:{identity['dtype']}:{threads}t:torch{identity['torch']}"


def _cache_path(identity: dict[str, Any]) -> Path:
    return cache_dir() / f"peak-{_hardware_digest(identity)}.json"


def use_peaks(entries: list[dict[str, Any]] | None) -> None:
    """Make :func:`matmul_peak` answer from ``entries`` (what a sweep measured before starting its runs, each as
    :func:`matmul_peak` returned it) where their key matches, without measuring or reading the cache."""
    _PRESET_PEAKS.clear()
    for entry in entries or []:
        if isinstance(entry, dict) and entry.get("key") and entry.get("flops"):
            _PRESET_PEAKS[entry["key"]] = dict(entry)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(dtype: str = "fp32", *, device: str | torch.device = "cpu",
                        sizes: tuple[int, ...] = PEAK_SIZES, seconds: float = 2.0, rounds: int = 3,
                        clock: Callable[[], float] = time.perf_counter) -> float:
    """FLOP/s of ``torch.mm`` on square matrices: the best timed call over ``sizes`` x ``rounds`` chunks, each
    about ``seconds / (len(sizes) * rounds)`` long (at least one call).

    The best call, not the mean: on a shared machine the slow calls are other processes, not the hardware. The
    sizes are visited round-robin (each round tries every size) so that a burst of load, which hurts the
    cache-bound large sizes most, cannot spoil every measurement of the size that would have been fastest.
    """
    if dtype not in _DTYPES:
        raise BadValueError(f"dtype {dtype!r} not supported; valid choices: {', '.join(_DTYPES)}")
    if not sizes or rounds < 1:
        raise BadValueError(f"need at least one size and one round, got sizes={sizes!r}, rounds={rounds}")
    device = torch.device(device)
    pairs = {}
    for size in sizes:
        a = torch.randn(size, size, device=device).to(_DTYPES[dtype])
        b = torch.randn(size, size, device=device).to(_DTYPES[dtype])
        torch.mm(a, b)  # warm-up: kernel selection, page faults
        pairs[size] = (a, b)
    _sync(device)
    chunk = seconds / (len(sizes) * rounds)
    best = 0.0
    for _ in range(rounds):
        for size, (a, b) in pairs.items():
            flops = 2 * size**3
            deadline = clock() + chunk
            while True:
                start = clock()
                torch.mm(a, b)
                _sync(device)
                end = clock()
                best = max(best, flops / max(end - start, 1e-12))
                if end >= deadline:
                    break
    return best


def _read_table(path: Path) -> dict[str, Any]:
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return table if isinstance(table, dict) else {}


def matmul_peak(dtype: str = "fp32", *, device: str | torch.device = "cpu", refresh: bool = False,
                seconds: float = 2.0) -> dict[str, Any]:
    """The matmul peak for ``dtype`` on ``device`` at the current torch thread count: handed over by a sweep
    (:func:`use_peaks`), else cached, else measured now and cached.

    ``refresh=True`` (``profile --remeasure-peak``) measures again and replaces the stored value, higher or lower:
    a peak measured on a busy machine is put right by measuring on a quiet one.

    Returns ``{"flops", "dtype", "device_name", "threads", "torch", "key", "measured_at", "cached": bool,
    "source"}``; ``source`` says where it came from ("measured", "cache", "sweep"). A cache that cannot be read
    or written (read-only home) is ignored: the peak is then measured again next time.
    """
    device = torch.device(device)
    identity = peak_identity(dtype, device=device)
    key = peak_cache_key(identity)
    if not refresh and key in _PRESET_PEAKS:
        return {**_PRESET_PEAKS[key], "cached": True, "source": "sweep"}
    path = _cache_path(identity)
    table = _read_table(path)
    if not refresh and isinstance(table.get(key), dict) and table[key].get("flops"):
        return {**table[key], "key": key, "cached": True, "source": "cache"}
    flops = measure_matmul_peak(dtype, device=device, seconds=seconds)
    entry = {"flops": flops, "dtype": dtype, "device_name": identity["name"], "threads": identity.get("threads"),
             "torch": identity["torch"], "sizes": list(PEAK_SIZES), "key": key,
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    table = _read_table(path)  # again: another process may have added other keys meanwhile
    table[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=2))
        os.replace(tmp, path)
    except OSError:
        pass
    return {**entry, "cached": False, "source": "measured"}


def peaks_for_runs(dtypes: list[str], *, threads: int, device: str | torch.device = "cpu") -> list[dict[str, Any]]:
    """The matmul peaks (cached, else measured now) that runs with ``threads`` torch threads will be divided by, one
    per dtype: what a sweep calls before it starts any run and hands to the runs (:func:`use_peaks`)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return [matmul_peak(dtype, device=device) for dtype in sorted(set(dtypes))]
    finally:
        torch.set_num_threads(previous)


def describe_peak(peak: dict[str, Any] | None) -> str | None:
    """One phrase naming a measured peak (the denominator of ``matmul_peak_share``), for metrics.json."""
    if not peak:
        return None
    threads = f", {peak['threads']} thread(s)" if peak.get("threads") else ""
    return (f"torch.mm peak measured on {peak.get('device_name')} ({peak.get('dtype')}{threads}, best over sizes "
            f"{'/'.join(str(s) for s in peak.get('sizes') or PEAK_SIZES)}, {peak.get('measured_at')}, "
            f"from {peak.get('source', 'cache')})")


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
    if flags is None and os.environ.get(NO_CPU_BF16_ENV, "") not in ("", "0"):
        return "32", f"auto: {NO_CPU_BF16_ENV} is set"
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
        raise BadValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
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
    theoretical = theoretical_peak(dtype, device)
    return {"step_ms": 1e3 * step, "step_ms_min": 1e3 * min(times), "step_ms_max": 1e3 * max(times),
            "img_s": input_size[0] / step, "train_gflops_s": flops / 1e9,
            "matmul_peak_share": mfu(flops, peak["flops"]), "peak_gflops_s": peak["flops"] / 1e9,
            "peak_dtype": peak["dtype"], "peak_source": describe_peak(peak),
            "palm_mfu": None if theoretical is None else flops / theoretical[0],
            "theoretical_peak_gflops_s": None if theoretical is None else theoretical[0] / 1e9,
            "macs_per_image": macs, "train_flops_per_image": training_flops_per_image(macs), "precision": precision,
            "steps": steps, "batch": input_size[0]}


def training_report(result: dict[str, Any]) -> str:
    """One paragraph of :func:`profile_training`'s figures, for ``visattn profile``."""
    batch = f"batch {result['batch']}, " if "batch" in result else ""
    return (f"training step ({batch}precision {result['precision']}, {result['steps']} timed steps): "
            f"median {result['step_ms']:.1f} ms "
            f"(min {result['step_ms_min']:.1f}, max {result['step_ms_max']:.1f}), {result['img_s']:.1f} img/s, "
            f"{result['train_flops_per_image'] / 1e9:.3f} GFLOPs/image (3 x forward), "
            f"{result['train_gflops_s']:.1f} GFLOP/s = {100 * (result['matmul_peak_share'] or 0):.1f}% of the "
            f"{result['peak_dtype']} torch.mm peak measured here, {result['peak_gflops_s']:.0f} GFLOP/s on "
            f"{cpu_model()}" + ("" if result.get("palm_mfu") is None else
                                f"; PaLM MFU {100 * result['palm_mfu']:.1f}% of the datasheet "
                                f"{result['theoretical_peak_gflops_s'] / 1e3:.0f} TFLOP/s"))


def median_spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of repeated measurements, for tables that show the spread."""
    return statistics.median(values), min(values), max(values)
