"""The attention-block contract, parametrized over the registry, and parity with timm / nn.MultiheadAttention."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
from torch import nn

import visattn
import visattn.attention
from visattn.registry import ATTENTION, Registry

BLOCKS = visattn.list_attention()
CUDA = [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


def randomise(module: nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Perturb every parameter (zero-initialised layers would block gradients)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)


def test_expected_blocks_registered():
    for name in ["cbam", "channel_gate", "eca", "mhsa", "none", "se", "spatial_gate", "stn"]:
        assert name in BLOCKS
    assert BLOCKS == sorted(BLOCKS)


def test_every_attention_file_registers_a_block():
    registered_modules = {ATTENTION.get(name).__module__ for name in BLOCKS}
    files = [m.name for m in pkgutil.iter_modules(visattn.attention.__path__)]
    assert files, "no block files found"
    for file in files:
        module = f"visattn.attention.{file}"
        importlib.import_module(module)
        assert module in registered_modules, f"{module} registers no attention block"


def test_duplicate_registration_raises():
    registry = Registry("thing")
    registry.register("a")(int)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a")(float)
    with pytest.raises(ValueError, match="already registered"):
        ATTENTION.register("se")(nn.Identity)


def test_unknown_block_lists_valid_names():
    with pytest.raises(KeyError) as info:
        visattn.build_attention("cbma", 64)
    message = str(info.value)
    assert "cbma" in message and "Did you mean 'cbam'" in message
    for name in BLOCKS:
        assert name in message


@pytest.mark.parametrize(
    ("name", "kwargs", "arg"),
    [
        ("se", {"reduction": 0}, "reduction"),
        ("eca", {"kernel_size": 4}, "kernel_size"),
        ("eca", {"kernel_size": -3}, "kernel_size"),
        ("cbam", {"reduction": 0}, "reduction"),
        ("cbam", {"kernel_size": 6}, "kernel_size"),
        ("mhsa", {"heads": 3}, "heads"),
        ("mhsa", {"pos_encoding": "rope"}, "pos_encoding"),
        ("stn", {"transform": "projective"}, "transform"),
    ],
)
def test_invalid_argument_names_block_and_argument(name, kwargs, arg):
    with pytest.raises(ValueError) as info:
        visattn.build_attention(name, 64, **kwargs)
    message = str(info.value)
    assert arg in message and "must be" in message
    assert message.startswith(name) or name in message


def test_unknown_keyword_is_rejected_with_hint():
    with pytest.raises(TypeError) as info:
        visattn.build_attention("se", 64, reducton=8)
    assert "reducton" in str(info.value) and "Did you mean 'reduction'" in str(info.value)


@pytest.mark.parametrize("channels", [0, -4, 2.5])
def test_bad_channels(channels):
    with pytest.raises(ValueError, match="channels"):
        visattn.build_attention("se", channels)


@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("size", [(1, 1), (7, 5), (8, 8)])
def test_shape_kept_train_and_eval(name, size):
    block = visattn.build_attention(name, 32)
    x = torch.randn(2, 32, *size)
    assert block.train()(x).shape == x.shape
    assert block.eval()(x[:1]).shape == (1, 32, *size)


@pytest.mark.parametrize("name", BLOCKS)
def test_every_parameter_gets_a_gradient(name):
    block = visattn.build_attention(name, 32)
    randomise(block)
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    block(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, param in block.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, f"{name}.{pname} got a zero gradient"


@pytest.mark.parametrize("name", BLOCKS)
def test_deterministic_under_seed(name):
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        block = visattn.build_attention(name, 16)
        randomise(block, seed=3)
        outs.append(block.eval()(torch.randn(2, 16, 5, 5)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", BLOCKS)
def test_bfloat16(name):
    block = visattn.build_attention(name, 16).to(torch.bfloat16).eval()
    x = torch.randn(2, 16, 5, 7, dtype=torch.bfloat16)
    out = block(x)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("device", ["cpu", *CUDA])
def test_devices(name, device):
    block = visattn.build_attention(name, 16).to(device).eval()
    x = torch.randn(2, 16, 6, 6, device=device)
    assert block(x).device.type == device


@pytest.mark.parametrize("name", BLOCKS)
def test_jit_trace_matches_eager(name):
    block = visattn.build_attention(name, 16).eval()
    randomise(block)
    x = torch.randn(2, 16, 6, 6)
    traced = torch.jit.trace(block, x, check_trace=False)
    torch.testing.assert_close(traced(x), block(x))


@pytest.mark.parametrize("name", ["se", "eca", "cbam", "mhsa", "stn"])
def test_torch_export(name):
    block = visattn.build_attention(name, 16).eval()
    randomise(block)
    x = torch.randn(2, 16, 6, 6)
    exported = torch.export.export(block, (x,))
    torch.testing.assert_close(exported.module()(x), block(x))


# ---- parity with the reference implementations ---------------------------------------------------------------


@pytest.mark.parametrize("channels", [64, 256, 1000])
def test_se_matches_timm(channels):
    from timm.layers import SEModule

    ours = visattn.build_attention("se", channels).eval()
    ref = SEModule(channels, rd_ratio=1 / 16).eval()
    randomise(ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, channels, 5, 5)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize(("channels", "kernel"), [(64, 3), (256, 5), (512, 5), (1024, 5), (2048, 7)])
def test_eca_matches_timm(channels, kernel):
    from timm.layers import EcaModule

    ours = visattn.build_attention("eca", channels).eval()
    ref = EcaModule(channels).eval()
    assert ours.kernel_size == kernel == ref.conv.kernel_size[0]
    randomise(ref)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, channels, 4, 4)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_mhsa_matches_multihead_attention():
    channels, heads = 64, 8
    ours = visattn.build_attention("mhsa", channels, heads=heads, pos_encoding="none", norm=False).eval()
    randomise(ours)
    ref = nn.MultiheadAttention(channels, heads, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    x = torch.randn(2, channels, 5, 6)
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    expected, _ = ref(tokens, tokens, tokens, need_weights=False)
    torch.testing.assert_close(ours.attend(tokens), expected, rtol=1e-5, atol=1e-5)
    full = x + expected.transpose(1, 2).reshape_as(x)
    torch.testing.assert_close(ours(x), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pos", ["sinusoidal", "learned", "none"])
@pytest.mark.parametrize("size", [(1, 1), (3, 11), (14, 14)])
def test_mhsa_starts_as_identity_and_takes_any_size(pos, size):
    block = visattn.build_attention("mhsa", 32, pos_encoding=pos).eval()
    x = torch.randn(2, 32, *size)
    torch.testing.assert_close(block(x), x)
    randomise(block)
    assert not torch.allclose(block(x), x)


def test_mhsa_default_heads():
    assert visattn.build_attention("mhsa", 256).heads == 8
    assert visattn.build_attention("mhsa", 32).heads == 2
    assert visattn.build_attention("mhsa", 3).heads == 1


def test_sinusoidal_encoding_distinguishes_positions():
    from visattn.attention.mhsa import sinusoidal_2d

    enc = sinusoidal_2d(32, 9, 13)  # (C, H, W)
    flat = enc.flatten(1).t()  # (N, C)
    assert torch.cdist(flat, flat).add(torch.eye(len(flat))).min() > 1e-3


@pytest.mark.parametrize("transform", ["affine", "translation_scale"])
@pytest.mark.parametrize("size", [(1, 1), (7, 9), (28, 28)])
def test_stn_is_identity_at_init(transform, size):
    block = visattn.build_attention("stn", 3, transform=transform).eval()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(block(x), x, rtol=1e-4, atol=1e-4)  # grid_sample's float32 coordinates
    theta = block.theta(x)
    torch.testing.assert_close(theta, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).expand(2, 2, 3))


def test_stn_translation_scale_shifts_content():
    block = visattn.build_attention("stn", 1, transform="translation_scale").eval()
    with torch.no_grad():
        block.fc_theta.bias.copy_(torch.tensor([0.5, 0.0, 0.0]))  # zoom in 2x on the centre
    x = torch.zeros(1, 1, 8, 8)
    x[..., 3:5, 3:5] = 1.0
    out = block(x)
    assert out.sum() > x.sum() * 3  # the 2x2 centre square now covers about 4x4


@pytest.mark.parametrize("channels", [256, 512, 2048])  # C/16 is a multiple of 8: timm's rounding keeps it
def test_parameter_formulas(channels):
    def params(name):
        return sum(p.numel() for p in visattn.build_attention(name, channels).parameters())

    r = channels // 16
    assert params("se") == 2 * channels * r + r + channels
    assert params("cbam") == 2 * channels * r + r + channels + 98 + 2
    assert params("channel_gate") == 2 * channels * r + r + channels
    assert params("spatial_gate") == 100
    assert params("none") == 0


def test_se_rounds_reduced_width_like_timm():
    assert visattn.build_attention("se", 64).fc1.out_channels == 8  # 64/16 = 4, rounded up to the divisor
    assert visattn.build_attention("cbam", 64).channel_gate.mlp[0].out_features == 4  # CBAM: plain C // r


def test_cbam_order_channel_then_spatial():
    block = visattn.build_attention("cbam", 32).eval()
    randomise(block)
    x = torch.randn(2, 32, 6, 6)
    expected = block.spatial_gate(block.channel_gate(x))
    torch.testing.assert_close(block(x), expected)
    cg = block.channel_gate
    weights = torch.sigmoid(cg.mlp(x.mean((2, 3))) + cg.mlp(x.amax((2, 3))))
    torch.testing.assert_close(cg(x), x * weights[:, :, None, None])
