"""Run a block's numerically sensitive ops in float32 inside mixed precision, without converting whole maps.

The gates (SE, ECA, CBAM) need float32 only for their small layers, which act on pooled statistics: the pooling
reads the activation once in its own dtype and accumulates in float32 (:func:`mean_f32`), the gate layers run
with autocast off (:class:`gate_precision`), and the gate multiplies the activation in the activation's dtype
(:func:`apply_gate`). Converting the whole (B, C, H, W) map to float32 first, as :class:`full_precision` does,
costs a full read and write of a map twice the size, and the float32 product another (measured in
benchmarks/attention_tax.py).

Without autocast (fp32 training, bf16-weight models, tracing and export) every helper is the plain op, so those
paths compute exactly what the unwrapped code computes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def autocast_on(x: torch.Tensor) -> bool:
    """Whether autocast is enabled for ``x``'s device type."""
    return torch.is_autocast_enabled(x.device.type)


class full_precision:  # noqa: N801 - used like torch.autocast / torch.no_grad
    """``with full_precision(x) as x32:`` runs the body with autocast off and ``x32 = x.float()``.

    Only when autocast is on for ``x``'s device; otherwise ``x32`` is ``x`` itself and nothing is
    entered, so fp32 and bf16-weight models, tracing and export see exactly the plain ops. The caller
    casts its result back to ``x.dtype``. For blocks that need the whole map in float32 (STN's resampling);
    a gate that only pools ``x`` uses :class:`gate_precision` and :func:`mean_f32` instead.
    """

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.device = x.device.type
        self.active = torch.is_autocast_enabled(self.device)
        self.context: Any = None

    def __enter__(self) -> torch.Tensor:
        if not self.active:
            return self.x
        self.context = torch.autocast(device_type=self.device, enabled=False)
        self.context.__enter__()
        return self.x.float()

    def __exit__(self, *exc: Any) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)
            self.context = None


class gate_precision:  # noqa: N801 - used like torch.autocast / torch.no_grad
    """``with gate_precision(x):`` runs the body with autocast off when it is on for ``x``'s device (the gate's
    layers then compute in float32 on float32 statistics from :func:`mean_f32` / :func:`amax_f32`); ``x`` itself is
    not converted. Without autocast nothing is entered."""

    def __init__(self, x: torch.Tensor) -> None:
        self.device = x.device.type
        self.context: Any = None

    def __enter__(self) -> None:
        if torch.is_autocast_enabled(self.device):
            self.context = torch.autocast(device_type=self.device, enabled=False)
            self.context.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)
            self.context = None


class _Mean(torch.autograd.Function):
    """``x.mean(dims, dtype=dtype)`` whose backward returns ``grad / count`` cast to ``x``'s dtype and *expanded*
    (a stride-0 view) instead of a materialised full-size gradient: autograd adds it into the other gradient of
    ``x`` (the gate's product) in that one pass. The values are those of torch's mean backward (and of the cast
    back that :class:`full_precision` needed), so fp32 gradients are bit for bit the same."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, dims: tuple[int, ...], keepdim: bool,  # noqa: ANN401
                dtype: torch.dtype | None) -> torch.Tensor:
        ctx.shape, ctx.dims, ctx.keepdim, ctx.in_dtype = x.shape, dims, keepdim, x.dtype
        return x.mean(dims, keepdim=keepdim, dtype=dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN401
        count = 1
        for dim in ctx.dims:
            count *= ctx.shape[dim]
        grad = (grad / count).to(ctx.in_dtype)
        if not ctx.keepdim:
            for dim in sorted(d % len(ctx.shape) for d in ctx.dims):
                grad = grad.unsqueeze(dim)
        return grad.expand(ctx.shape), None, None, None


def mean_f32(x: torch.Tensor, dims: int | Sequence[int], *, keepdim: bool = False, upcast: bool) -> torch.Tensor:
    """``x.mean(dims)``; with ``upcast`` (autocast on) accumulated and returned in float32 while ``x`` is read once
    in its own dtype (bf16 in, float32 out), the values :class:`full_precision`'s ``x.float().mean(dims)`` gave.

    When a gradient is needed the backward is :class:`_Mean`'s (same values, one pass less); otherwise (eval,
    tracing, export) it is the plain ``mean`` op.
    """
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    dtype = torch.float32 if upcast else None
    if torch.is_grad_enabled() and x.requires_grad:
        return _Mean.apply(x, dims, keepdim, dtype)
    return x.mean(dims, keepdim=keepdim, dtype=dtype)


def amax_f32(x: torch.Tensor, dims: int | Sequence[int], *, keepdim: bool = False, upcast: bool) -> torch.Tensor:
    """``x.amax(dims)``, as float32 with ``upcast``: a maximum is exact in any dtype, so only the small result is
    converted."""
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    out = x.amax(dims, keepdim=keepdim)
    return out.float() if upcast else out


def apply_gate(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``x * weights`` in ``x``'s dtype. Under autocast the (small) float32 weights are rounded to ``x``'s dtype
    first, so a bf16 map is multiplied in bf16 (two roundings, each <= 2^-9 relative) instead of through a float32
    copy of the whole map; a float32 map gets exactly ``x * weights``."""
    if weights.dtype != x.dtype:
        weights = weights.to(x.dtype)
    return x * weights
