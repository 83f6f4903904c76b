"""Parameters, MACs and FLOPs of a model, measured by running it once at the real input size.

Convention: MACs are multiply-accumulates and FLOPs = 2 x MACs. The "GFLOPs" of the SE, ECA, CBAM
and Swin papers and torchvision's "GFLOPS" are MACs (ResNet-50: 4.09 G), so compare those with ``macs``.

Counted (``torch.utils.flop_counter`` formulas): convolutions, linear layers, mm/bmm/matmul/einsum
and scaled dot-product attention, QK^T and AV (a causal mask is not discounted). torch's counter
gives zero for the CPU SDPA kernel (``aten._scaled_dot_product_flash_attention_for_cpu``), so a
formula is registered here; the math fallback (e.g. with dropout) runs as bmm and is counted anyway.
``nn.MultiheadAttention``'s fused fast path is switched off while counting so it runs as linear + SDPA.

Not counted, as in the papers: O(elements) work (elementwise ops, activations, norms, softmax,
pooling, reductions, interpolation, and ``grid_sample``/``affine_grid``: a few MACs per output
element). Any other op without a formula (cdist, linalg, FFT, sort, custom ops ...) is listed in
``Complexity.uncounted_ops`` rather than silently counted as zero.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from visattn.errors import BadValueError
from visattn.layers import AttentionSlot

__all__ = ["Complexity", "count", "measure_latency"]

# aten ops without MAC arithmetic worth counting: layout, creation, copies, indexing, comparisons ...
_FREE_OPS = frozenset("""
view _unsafe_view reshape _reshape_alias permute transpose t expand squeeze unsqueeze flatten unflatten
slice select unbind split split_with_sizes chunk narrow cat stack clone copy _to_copy contiguous detach
alias as_strided lift_fresh lift_fresh_copy empty empty_like empty_strided new_empty new_empty_strided
zeros zeros_like new_zeros ones ones_like new_ones full full_like new_full fill zero arange linspace
scalar_tensor rand randn randint rand_like randn_like normal uniform bernoulli index index_select
gather scatter index_put masked_select roll flip repeat constant_pad_nd reflection_pad1d
reflection_pad2d replication_pad2d pixel_shuffle pixel_unshuffle channel_shuffle embedding im2col
_local_scalar_dense eq ne lt gt le ge logical_and logical_or logical_not where masked_fill diagonal
tril triu _assert_async nonzero
""".split())
# ... and O(elements) arithmetic, left out of MACs by convention.
_NEGLIGIBLE_OPS = frozenset("""
add sub rsub mul div neg reciprocal abs pow sqrt rsqrt exp log log1p sin cos tanh sigmoid relu
leaky_relu gelu silu hardswish hardsigmoid hardtanh elu mish softplus clamp clamp_min clamp_max
maximum minimum erf sign floor ceil round addcmul addcdiv lerp _softmax _safe_softmax _log_softmax
softmax log_softmax native_batch_norm _native_batch_norm_legit _native_batch_norm_legit_no_training
native_layer_norm native_group_norm _fused_rms_norm max_pool1d max_pool2d max_pool2d_with_indices
max_pool3d_with_indices avg_pool1d avg_pool2d avg_pool3d _adaptive_avg_pool2d adaptive_avg_pool2d
adaptive_max_pool1d adaptive_max_pool2d _adaptive_avg_pool3d mean sum amax amin max min var var_mean
std std_mean prod linalg_vector_norm cumsum argmax argmin logsumexp native_dropout col2im
upsample_nearest1d upsample_nearest2d upsample_nearest3d _upsample_nearest_exact2d upsample_linear1d
upsample_bilinear2d _upsample_bilinear2d_aa upsample_bicubic2d grid_sampler_2d affine_grid_generator
""".split())
_SDPA_KERNELS = (
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_attention_math_for_mps",
)


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                **kwargs: Any) -> int:
    """2 x MACs of QK^T and AV: every query row (batch x heads x Nq) meets every key."""
    return 2 * math.prod(query_shape[:-1]) * key_shape[-2] * (query_shape[-1] + value_shape[-1])


def _extra_formulas() -> dict[Any, Any]:
    """Formulas for the SDPA kernels this torch's FlopCounterMode has none for."""
    extra: dict[Any, Any] = {}
    for name in _SDPA_KERNELS:
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None and packet not in flop_registry:
            extra[packet] = _sdpa_flops
    return extra


class _OpRecorder(TorchDispatchMode):
    """Counts every op that reaches the kernels (entered below FlopCounterMode: after its decompositions)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[Any] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls[func._overloadpacket] += 1
        return func(*args, **(kwargs or {}))


def _allowed(packet: Any) -> bool:
    namespace, _, name = str(packet).partition(".")
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]  # in-place variant
    return namespace == "aten" and (name in _FREE_OPS or name in _NEGLIGIBLE_OPS)


@dataclass(frozen=True)
class Complexity:
    """What :func:`count` measured. MACs = multiply-accumulates, FLOPs = 2 x MACs.

    ``by_module``: module path -> (params, MACs) for every top-level child and every filled
    ``AttentionSlot``; ``attention_blocks``: filled slot path -> block name. ``attention_params`` and
    ``attention_macs`` sum over filled slots (outermost ones). ``uncounted_ops``: op -> calls for
    ops with arithmetic that has no formula (their cost is missing from ``macs``).
    """

    params: int
    macs: int
    flops: int
    input_size: tuple[int, ...]
    by_module: dict[str, tuple[int, int]]
    attention_params: int
    attention_macs: int
    uncounted_ops: dict[str, int]
    attention_blocks: dict[str, str]

    def table(self) -> str:
        """A text table: top-level modules, then each attention block and its overhead over the bare model."""
        base_params = self.params - self.attention_params
        base_macs = self.macs - self.attention_macs
        rows = [("module", "params", "MACs", "+params", "+MACs")]
        for path, (params, macs) in self.by_module.items():
            if path in self.attention_blocks:
                rows.append((f"  + {path} [{self.attention_blocks[path]}]", _human(params), _human(macs),
                             _percent(params, base_params), _percent(macs, base_macs)))
            else:
                rows.append((path, _human(params), _human(macs), "", ""))
        if self.attention_blocks:
            rows.append((f"attention ({len(self.attention_blocks)} blocks)", _human(self.attention_params),
                         _human(self.attention_macs), _percent(self.attention_params, base_params),
                         _percent(self.attention_macs, base_macs)))
        rows.append(("total", f"{self.params:,}", f"{self.macs:,}", "", ""))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                           for i, (cell, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        if self.attention_blocks:
            lines.append("'+' rows are included in the rows above; +% is over the model without attention")
        lines.append(f"input {tuple(self.input_size)}: {self.macs / 1e9:.3f} GMACs = "
                     f"{self.flops / 1e9:.3f} GFLOPs (FLOPs = 2 x MACs; papers' 'GFLOPs' are MACs)")
        if self.uncounted_ops:
            ops = ", ".join(f"{name} x{calls}" for name, calls in sorted(self.uncounted_ops.items()))
            lines.append(f"NOT counted (no formula): {ops}")
        return "\n".join(lines)


def _human(value: int) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{suffix}"
    return str(value)


def _percent(part: int, whole: int) -> str:
    return f"+{100.0 * part / whole:.2f}%" if whole > 0 else ""


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _check_size(input_size: Any) -> tuple[int, ...]:
    if (not isinstance(input_size, (tuple, list)) or not input_size
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_size)):
        raise BadValueError(f"input_size must be a non-empty tuple of positive ints, got {input_size!r}")
    return tuple(input_size)


@contextlib.contextmanager
def _evaluating(model: nn.Module, input_size: Any,
                device: torch.device | str | None) -> Iterator[torch.Tensor]:
    """Eval mode (and ``device``) for the duration; yields a seeded random input; restores the model."""
    size = _check_size(input_size)
    tensors = [*model.parameters(), *model.buffers()]
    home = tensors[0].device if tensors else torch.device("cpu")
    target = torch.device(device) if device is not None else home
    dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.get_default_dtype())
    modes = {m: m.training for m in model.modules()}
    fastpath = torch.backends.mha.get_fastpath_enabled()
    if target != home:
        model.to(target)
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        generator = torch.Generator().manual_seed(0)
        yield torch.randn(size, generator=generator, dtype=dtype).to(target)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for module, training in modes.items():
            module.training = training
        if target != home:
            model.to(home)


def count(model: nn.Module, *, input_size: tuple[int, ...] = (1, 3, 224, 224),
          device: torch.device | str | None = None) -> Complexity:
    """Count ``model``'s parameters and MACs (FLOPs = 2 x MACs) with one eval, no-grad forward.

    The input is a random tensor of ``input_size`` (batch included: MACs scale with it). ``device``:
    where to run; None means the model's own device (a model elsewhere is moved there and back).
    Any output structure (tensor, dict, list, tuple) is accepted.
    """
    with _evaluating(model, input_size, device) as x:
        recorder = _OpRecorder()
        counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
        with torch.no_grad(), recorder, counter:
            model(x)
    per_module = {name: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    modules = dict(model.named_modules(remove_duplicate=False))

    def macs_of(path: str) -> int:
        """MACs while ``path`` ran; a container never called itself (ModuleList) sums its children."""
        if f"{root}.{path}" in per_module:
            return per_module[f"{root}.{path}"]
        return sum(macs_of(f"{path}.{name}") for name, _ in modules[path].named_children())

    by_module = {name: (_num_params(child), macs_of(name)) for name, child in model.named_children()}
    slots = {name: m for name, m in model.named_modules() if isinstance(m, AttentionSlot) and m.filled}
    outer = [name for name in slots if not any(name.startswith(f"{other}.") for other in slots)]
    attention_params: set[nn.Parameter] = set()
    for name in outer:
        attention_params.update(slots[name].parameters())
    for name, slot in slots.items():
        by_module[name] = (_num_params(slot), macs_of(name))
    uncounted = {str(packet): calls for packet, calls in recorder.calls.items()
                 if packet not in counter.flop_registry and not _allowed(packet)}
    macs = counter.get_total_flops() // 2
    return Complexity(
        params=_num_params(model), macs=macs, flops=2 * macs, input_size=tuple(input_size),
        by_module=by_module, attention_params=sum(p.numel() for p in attention_params),
        attention_macs=sum(macs_of(name) for name in outer), uncounted_ops=dict(sorted(uncounted.items())),
        attention_blocks={name: str(slot.block_name) for name, slot in slots.items()},
    )


def measure_latency(model: nn.Module, *, input_size: tuple[int, ...] = (1, 3, 224, 224), warmup: int = 3,
                    repeats: int = 10, device: torch.device | str | None = None) -> dict[str, float]:
    """Wall-clock forward latency in ms (eval, no grad) after ``warmup`` untimed passes.

    Returns ``median_ms``, ``mean_ms``, ``min_ms``, ``max_ms`` and ``repeats``.
    """
    if not isinstance(warmup, int) or warmup < 0:
        raise BadValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise BadValueError(f"repeats must be an int >= 1, got {repeats!r}")
    times: list[float] = []
    with _evaluating(model, input_size, device) as x, torch.no_grad():
        sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
        for step in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            if step >= warmup:
                times.append(1000.0 * (time.perf_counter() - start))
    return {"median_ms": statistics.median(times), "mean_ms": statistics.fmean(times), "min_ms": min(times),
            "max_ms": max(times), "repeats": float(repeats)}
