"""count(): params and MACs against published numbers, exact attention counts, slots, uncounted ops."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import visattn
import visattn.backbones  # noqa: F401  (registers the backbones)
from visattn.complexity import Complexity, count, measure_latency
from visattn.registry import BACKBONES


def close(value: int, expected: float, rel: float = 0.01) -> bool:
    return abs(value - expected) <= rel * expected


@pytest.fixture(scope="module")
def resnet50_count() -> Complexity:
    return count(BACKBONES.build("resnet50"))


def test_resnet50(resnet50_count):
    c = resnet50_count
    assert c.params == 25_557_032
    assert c.macs == 4_089_184_256 and close(c.macs, 4.09e9)  # torchvision: 4.09 "GFLOPS" = GMACs
    assert c.flops == 2 * c.macs
    assert c.input_size == (1, 3, 224, 224)
    assert c.uncounted_ops == {}
    assert c.attention_params == 0 and c.attention_macs == 0
    assert set(c.by_module) == {name for name, _ in BACKBONES.build("resnet18").named_children()}
    assert sum(macs for _, macs in c.by_module.values()) == c.macs
    assert c.by_module["fc"] == (2048 * 1000 + 1000, 2048 * 1000)


def test_torchvision_resnet50_same_macs(resnet50_count):
    torchvision = pytest.importorskip("torchvision")
    c = count(torchvision.models.resnet50())
    assert (c.params, c.macs) == (resnet50_count.params, resnet50_count.macs)


def test_resnet18():
    c = count(BACKBONES.build("resnet18"))
    assert c.params == 11_689_512
    assert c.macs == 1_814_073_344 and close(c.macs, 1.81e9)


def test_mhsa_block_exact():
    channels, size = 256, 14
    block = visattn.build_attention("mhsa", channels)
    tokens, heads, head_dim = size * size, block.heads, block.head_dim
    assert heads * head_dim == channels
    expected = (
        tokens * channels * 3 * channels  # qkv
        + tokens * channels * channels  # proj
        + heads * tokens * tokens * head_dim  # Q K^T
        + heads * tokens * tokens * head_dim  # A V
    )
    c = count(block, input_size=(1, channels, size, size))
    assert expected == 71_049_216
    assert c.macs == expected
    assert c.uncounted_ops == {}


class OnlySDPA(nn.Module):
    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, heads, N, head_dim)
        return F.scaled_dot_product_attention(x, x, x[..., :8], **self.kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"is_causal": True}, {"dropout_p": 0.1}, {"attn_mask": torch.zeros(49, 49)},
     {"attn_mask": torch.ones(49, 49, dtype=torch.bool)}],
    ids=["plain", "causal", "dropout-math", "float-mask", "bool-mask"],
)
def test_sdpa_counted(kwargs):
    batch, heads, tokens, head_dim, value_dim = 2, 4, 49, 16, 8
    c = count(OnlySDPA(**kwargs), input_size=(batch, heads, tokens, head_dim))
    assert c.macs == batch * heads * tokens * tokens * (head_dim + value_dim)  # causal: not discounted
    assert c.uncounted_ops == {}


def test_multihead_attention_fast_path_counted():
    embed, heads, tokens = 64, 4, 50
    mha = nn.MultiheadAttention(embed, heads, batch_first=True)

    class SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    c = count(SelfAttention(), input_size=(1, tokens, embed))
    assert c.macs == tokens * embed * 4 * embed + 2 * tokens * tokens * embed
    assert c.uncounted_ops == {}
    assert torch.backends.mha.get_fastpath_enabled()  # restored


def test_filled_slot_breakdown():
    size = (1, 3, 64, 64)
    model = BACKBONES.build("resnet50", num_classes=10)
    bare = count(model, input_size=size)
    block = visattn.build_attention("se", 256)
    model.layer1[0].slot.fill(block, "se")
    c = count(model, input_size=size)
    block_params = sum(p.numel() for p in block.parameters())
    assert block_params == 8464
    assert c.by_module["layer1.0.slot"] == (block_params, 2 * 256 * 16)  # fc1, fc2 on the pooled vector
    assert c.attention_params == block_params and c.attention_macs == 2 * 256 * 16
    assert c.attention_blocks == {"layer1.0.slot": "se"}
    assert (c.params, c.macs) == (bare.params + block_params, bare.macs + c.attention_macs)
    table = c.table()
    assert "layer1.0.slot [se]" in table and f"{c.macs:,}" in table


def test_uncounted_ops_reported():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, N, 8)
            y = self.fc(x)
            gram = torch.linalg.inv(y[:, :8] @ y[:, :8].transpose(1, 2) + torch.eye(8))
            return torch.cdist(y, y).sum() + gram.sum()

    c = count(Odd(), input_size=(2, 40, 8))
    assert "aten.linalg_inv_ex" in c.uncounted_ops
    assert any("dist" in name for name in c.uncounted_ops)  # torch.cdist -> aten._euclidean_dist
    assert c.macs == 2 * 40 * 8 * 8 + 2 * 8 * 8 * 8  # the linear and the matmul are still counted
    assert "NOT counted" in c.table()


@pytest.mark.parametrize("wrap", [dict, list, tuple])
def test_structured_outputs_and_state_restored(wrap):
    class Multi(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor):
            out = [self.a(x.mean((2, 3))), self.b(x)]
            return dict(zip("ab", out, strict=True)) if wrap is dict else wrap(out)

    model = Multi().train()
    c = count(model, input_size=(1, 3, 5, 5))
    assert c.macs == 3 * 4 + 3 * 4 * 25
    assert model.training and all(m.training for m in model.modules())


def test_bad_input_size():
    with pytest.raises(ValueError, match="input_size"):
        count(nn.Identity(), input_size=(1, 0, 4))


def test_measure_latency():
    stats = measure_latency(nn.Conv2d(3, 8, 3), input_size=(1, 3, 32, 32), warmup=1, repeats=3)
    assert stats["median_ms"] > 0 and stats["min_ms"] <= stats["median_ms"] <= stats["max_ms"]
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(nn.Identity(), input_size=(1,), warmup=0, repeats=0)


@pytest.mark.parametrize(("name", "gmacs"), [("vit_small", 4.60), ("swin_t", 4.49)])
def test_transformer_backbones(name, gmacs):
    if name not in BACKBONES:
        pytest.skip(f"backbone {name!r} is not registered yet")
    c = count(BACKBONES.build(name))
    assert close(c.macs, gmacs * 1e9)
    assert c.uncounted_ops == {}
    assert sum(macs for _, macs in c.by_module.values()) == c.macs  # containers never called still add up
