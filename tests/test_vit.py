"""ViT backbone: timm parity, parameter counts, pos-embed resampling, input-size rule and slots."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import visattn.backbones  # noqa: F401  (registers the backbones)
from visattn.backbones.vit import VisionTransformer
from visattn.layers import AttentionSlot
from visattn.registry import BACKBONES

TINY = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2, "num_classes": 10}


def tiny(seed: int = 0, **overrides: object) -> VisionTransformer:
    torch.manual_seed(seed)
    return BACKBONES.build("vit_tiny", **{**TINY, **overrides}).eval()


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


class Record(nn.Module):
    """Identity that remembers the shape it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return x


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "expected"), [("vit_tiny", 5_717_416), ("vit_small", 22_050_664), ("vit_base", 86_567_656)]
)
def test_parameter_count_matches_timm(name: str, expected: int) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        ours = BACKBONES.build(name)
        ref = timm.create_model(f"{name}_patch16_224", pretrained=False)
    assert sum(p.numel() for p in ours.parameters()) == expected
    assert sum(p.numel() for p in ref.parameters()) == expected
    assert list(ours.state_dict()) == list(ref.state_dict())  # same names in the same order


@pytest.mark.slow
def test_timm_vit_small_loads_strictly_and_matches_logits() -> None:
    torch.manual_seed(0)
    ref = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    with torch.device("meta"):  # skip our own init: every tensor comes from timm's state dict
        ours = BACKBONES.build("vit_small").eval()
    ours.load_state_dict(ref.state_dict(), strict=True, assign=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = ref(x)
        tokens = ours.forward_features(x)
        got = ours.forward_head(tokens)
    assert got.shape == (2, 1000)
    assert tokens.shape == (2, 1 + 14 * 14, 384)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_registered_variants_and_published_defaults() -> None:
    for name in ("vit_tiny", "vit_small", "vit_base"):
        assert name in BACKBONES
    with torch.device("meta"):
        model = BACKBONES.build("vit_base", depth=1)
    assert model.num_features == 768 and model.blocks[0].attn.num_heads == 12 and len(model.blocks) == 1
    with pytest.raises(TypeError, match="drop_path_rate"):
        BACKBONES.build("vit_tiny", drop_path=0.1)


def test_other_input_size_resamples_pos_embed_like_timm() -> None:
    model = tiny()
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10, dynamic_img_size=True
    ).eval()
    ref.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 3, 48, 40)
    with torch.no_grad():
        got = model(x)
        torch.testing.assert_close(got, ref(x), atol=1e-5, rtol=0)
        assert model.position_embedding((6, 5)).shape == (1, 1 + 30, 32)
        assert model.position_embedding((4, 4)) is model.pos_embed  # construction grid: no resampling
    assert got.shape == (2, 10)
    assert not torch.equal(model.position_embedding((6, 5))[:, 1:7], model.pos_embed[:, 1:7])


def test_resampled_pos_embed_gets_gradients() -> None:
    model = tiny().train()
    model(torch.randn(1, 3, 48, 48)).sum().backward()
    assert model.pos_embed.grad is not None and model.pos_embed.grad.abs().sum() > 0


def test_check_input_size_rejects_non_multiples() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"vit_tiny: image size 30x30 .* multiples of the patch size 8"):
        model.check_input_size(30, 30)
    with pytest.raises(ValueError, match="30x30"):
        model(torch.randn(1, 3, 30, 30))  # forward applies the same rule instead of silently cropping
    model.check_input_size(48, 16)
    with pytest.raises(ValueError, match="img_size"):
        BACKBONES.build("vit_tiny", **{**TINY, "img_size": 30})
    with pytest.raises(ValueError, match="embed_dim"):
        BACKBONES.build("vit_tiny", **{**TINY, "embed_dim": 33})


def test_stage_info_agrees_with_forward_stages() -> None:
    model = tiny()
    (info,) = model.stage_info
    assert (info.name, info.channels, info.stride) == ("blocks", 32, 8)
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        (stage,) = model.forward_stages(x)
        tokens = model.forward_features(x)
    assert stage.shape == (2, info.channels, 48 // info.stride, 32 // info.stride)
    # the map is the patch tokens laid out row-major: token 1 + r*W + c is pixel (r, c)
    torch.testing.assert_close(stage[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])


def test_slots_are_declared_empty_and_free() -> None:
    model = tiny()
    slots = {name: m for name, m in model.named_modules() if isinstance(m, AttentionSlot)}
    assert list(slots) == ["input", "blocks.0.slot", "blocks.1.slot"]
    assert [s.role for s in slots.values()] == ["input", "block", "block"]
    assert slots["input"].channels == 3 and slots["blocks.0.slot"].channels == 32
    assert not any(s.filled for s in slots.values())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        for block in model.blocks:
            block.slot.fill(nn.Identity(), "identity")
        assert torch.equal(model(x), before)


def test_block_slot_sees_patch_grid_and_leaves_class_token_alone() -> None:
    model = tiny()
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        logits, tokens = model(x), model.forward_features(x)
        recorder = Record()
        model.blocks[0].slot.fill(recorder, "record")
        model(x)
        assert recorder.shapes == [(2, 32, 6, 4)]  # (B, C, H/p, W/p)
        model.blocks[0].slot.block = None

        # zeroing the last block's MLP branch on patches: the class token (and so the logits) is unchanged
        model.blocks[-1].slot.fill(Zero(), "zero")
        zeroed = model.forward_features(x)
        torch.testing.assert_close(zeroed[:, 0], tokens[:, 0], atol=0, rtol=0)
        torch.testing.assert_close(model(x), logits, atol=0, rtol=0)
        assert (zeroed[:, 1:] - tokens[:, 1:]).abs().amax() > 1e-3

        # in an earlier block the change reaches the class token through later attention
        model.blocks[-1].slot.block = None
        model.blocks[0].slot.fill(Zero(), "zero")
        assert (model(x) - logits).abs().amax() > 1e-4
    assert "blocks.0.slot.block" not in dict(model.named_parameters())  # Zero has no parameters


def test_input_slot_acts_on_the_image() -> None:
    model = tiny()
    model.input.fill(Zero(), "zero")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = tiny()(torch.zeros_like(x))
        torch.testing.assert_close(model(x), expected, atol=0, rtol=0)


def test_filled_slot_parameters_live_under_the_slot() -> None:
    model = tiny()
    model.blocks[1].slot.fill(nn.Conv2d(32, 32, 1), "conv")
    assert "blocks.1.slot.block.weight" in model.state_dict()


def test_reset_classifier_and_headless() -> None:
    model = tiny()
    model.reset_classifier(3)
    assert model.num_classes == 3 and model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 32)


def test_drop_path_trains_and_eval_is_deterministic() -> None:
    model = tiny(drop_path_rate=0.5, drop_rate=0.1)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), atol=0, rtol=0)
        model.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        assert not torch.equal(first, model(x))
