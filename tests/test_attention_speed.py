"""The attention tax work (issue 21): cheaper mixed-precision paths that keep every fp32 value as it was."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import visattn
from visattn.layers.precision import apply_gate, mean_f32

GATES = ["se", "eca", "cbam", "channel_gate", "spatial_gate"]


class _Ops(TorchDispatchMode):
    """Records (op name, output dtypes and sizes, input dtypes) of every aten op that runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[tuple[torch.dtype, int]], list[torch.dtype]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, (tuple, list)) else [out]
        ins = [a.dtype for a in args if isinstance(a, torch.Tensor)]
        self.calls.append((str(func), [(o.dtype, o.numel()) for o in outs if isinstance(o, torch.Tensor)], ins))
        return out


@pytest.mark.parametrize("name", GATES)
def test_gates_under_autocast_never_copy_the_whole_map_to_float32(name):
    """The gates used to convert the whole (B, C, H, W) activation to float32 to pool it, and to multiply through a
    float32 product: two full-size float32 tensors per block, forward, and more in the backward."""
    torch.manual_seed(0)
    block = visattn.build_attention(name, 16).train()
    x = torch.randn(2, 16, 6, 6, dtype=torch.bfloat16, requires_grad=True)
    loss_weights = torch.linspace(-1, 1, x.numel()).view_as(x).bfloat16()
    ops = _Ops()
    with ops:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = block(x)
        (out * loss_weights).sum().backward()
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    full = [op for op, outs, _ in ops.calls
            if any(dtype == torch.float32 and numel >= x.numel() for dtype, numel in outs)]
    assert full == []


def test_mean_f32_gradient_is_torchs_bit_for_bit():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 3, requires_grad=True)
    weights = torch.randn(4, 8, 1, 1)
    for keepdim in (True, False):
        pooled = mean_f32(x, (2, 3), keepdim=keepdim, upcast=False)
        grad_ours, = torch.autograd.grad(((pooled.view(4, 8, 1, 1) - 1) ** 2).sum() + (x * weights).sum(), x)
        plain = x.mean((2, 3), keepdim=keepdim)
        grad_torch, = torch.autograd.grad(((plain.view(4, 8, 1, 1) - 1) ** 2).sum() + (x * weights).sum(), x)
        assert torch.equal(pooled.view(4, 8), plain.view(4, 8)) and torch.equal(grad_ours, grad_torch)
    # bf16 under upcast: float32 values and gradients as the old x.float().mean() gave them
    xb = x.detach().bfloat16().requires_grad_()
    pooled = mean_f32(xb, 1, keepdim=True, upcast=True)
    assert pooled.dtype == torch.float32
    grad_ours, = torch.autograd.grad((pooled ** 2).sum(), xb)
    old = xb.float().mean(1, keepdim=True)
    grad_old, = torch.autograd.grad((old ** 2).sum(), xb)
    assert torch.equal(pooled, old) and torch.equal(grad_ours, grad_old)
    # no gradient wanted (eval, export): the plain op
    with torch.no_grad():
        assert torch.equal(mean_f32(x, (2, 3), upcast=False), x.mean((2, 3)))


def test_apply_gate_keeps_the_maps_dtype():
    x = torch.randn(2, 3, 4, 4)
    weights = torch.rand(2, 3, 1, 1)
    assert torch.equal(apply_gate(x, weights), x * weights)
    out = apply_gate(x.bfloat16(), weights)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), x.bfloat16().float() * weights, rtol=8e-3, atol=0)


def test_mhsa_attends_in_float32_on_cpu_under_bf16_with_the_same_values():
    torch.manual_seed(0)
    block = visattn.build_attention("mhsa", 32).eval()
    torch.nn.init.normal_(block.proj.weight, std=0.2)
    x = torch.randn(2, 32, 4, 4)
    ops = _Ops()
    with ops, torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        out = block(x.bfloat16())
    sdpa = [ins for op, _, ins in ops.calls if "scaled_dot_product" in op]
    assert sdpa and all(dtype == torch.float32 for ins in sdpa for dtype in ins[:3])
    assert out.dtype == torch.bfloat16
    # the values of torch's bf16 kernel (which computes in float32 inside, only slower), up to one bf16 rounding
    q, k, v = torch.randn(3, 2, 2, 16, 16).bfloat16()
    attended = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float()).bfloat16()
    torch.testing.assert_close(attended, torch.nn.functional.scaled_dot_product_attention(q, k, v), rtol=8e-3,
                               atol=8e-3)


def test_stn_localisation_at_reduced_resolution_is_an_option():
    torch.manual_seed(0)
    default = visattn.build_attention("stn", 3)
    assert default.loc_size is None
    block = visattn.build_attention("stn", 3, loc_size=16)
    seen: list[tuple[int, ...]] = []
    block.localization[0].register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    x = torch.randn(2, 3, 40, 24)
    out = block(x)
    assert seen == [(2, 3, 16, 16)] and out.shape == x.shape
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)  # still the identity transform at initialisation
    small = torch.randn(2, 3, 12, 12)
    block(small)
    assert seen[-1] == (2, 3, 12, 12)  # never upsampled
    with pytest.raises(ValueError, match="loc_size"):
        visattn.build_attention("stn", 3, loc_size=0)
