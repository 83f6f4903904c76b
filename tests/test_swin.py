"""Swin-T/S: timm parity (names, counts, logits), shifted-window mask, any input size, slots."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import visattn.backbones  # noqa: F401  (registers the backbones)
from visattn.backbones.swin import (
    MASK_VALUE,
    SwinTransformer,
    SwinTransformerBlock,
    relative_position_index,
    shift_window_mask,
    stage_window,
)
from visattn.layers import AttentionSlot
from visattn.models.build import build_model
from visattn.registry import BACKBONES

timm = pytest.importorskip("timm")

TINY = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4, img_size=32)
TIMM_TINY = dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), window_size=4, img_size=32)


def tiny(**kwargs) -> SwinTransformer:
    torch.manual_seed(0)
    return BACKBONES.build("swin_t", num_classes=10, **{**TINY, **kwargs}).eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "timm_name", "expected"),
    [
        ("swin_t", "swin_tiny_patch4_window7_224", 28_288_354),
        ("swin_s", "swin_small_patch4_window7_224", 49_606_258),
    ],
)
def test_param_count_matches_timm(name: str, timm_name: str, expected: int) -> None:
    with torch.device("meta"):  # shapes only: no init cost
        ours = BACKBONES.build(name)
        ref = timm.create_model(timm_name, pretrained=False)
    assert n_params(ours) == expected
    assert n_params(ref) == expected


@pytest.mark.slow
def test_swin_t_logits_match_timm() -> None:
    torch.manual_seed(0)
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
    ours = BACKBONES.build("swin_t").eval()
    converted = SwinTransformer.convert_state_dict(ref.state_dict())
    # names equal timm's up to layers. -> stages. and head.fc. -> head.
    expected = [k.replace("layers.", "stages.", 1).replace("head.fc.", "head.") for k in ref.state_dict()]
    assert list(ours.state_dict()) == expected
    assert "stages.1.downsample.reduction.weight" in converted
    assert not any("relative_position_index" in k or "attn_mask" in k for k in ours.state_dict())
    ours.load_state_dict(converted, strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (ref(x) - ours(x)).abs().max().item()
    assert diff < 1e-5


def test_microsoft_layout_and_buffers_convert() -> None:
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, **TIMM_TINY)
    state = {}
    for key, value in ref.state_dict().items():  # rewrite into the original layout: merging at stage end
        if key.startswith("layers.1.downsample."):
            key = key.replace("layers.1.", "layers.0.", 1)
        state[key.replace("head.fc.", "head.")] = value
    state["layers.0.blocks.1.attn_mask"] = torch.zeros(4, 16, 16)
    state["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    model = BACKBONES.build("swin_t", num_classes=1000, **TINY).eval()
    model.load_state_dict(SwinTransformer.convert_state_dict(state), strict=True)
    ref.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ref(x), model(x), atol=1e-5)


def test_shift_mask_blocks_wrap_around() -> None:
    # 8x8 map, window 4, shift 2: after rolling by -2 the bottom-right window holds original rows/cols
    # 6,7 (region label 1) next to the wrapped-in rows/cols 0,1 (label 2).
    mask = shift_window_mask(8, 8, (4, 4), (2, 2))
    assert mask.shape == (4, 16, 16)
    assert set(mask.unique().tolist()) == {0.0, MASK_VALUE}
    assert (mask[0] == 0).all()  # top-left window: no wrap-around
    last = mask[3]
    assert last[0, 5] == 0  # local (0,0) [orig (6,6)] with local (1,1) [orig (7,7)]
    assert last[0, 10] == MASK_VALUE  # local (0,0) [orig (6,6)] with local (2,2) [orig (0,0)]
    assert last[0, 2] == MASK_VALUE  # local (0,0) [orig (6,6)] with local (0,2) [orig (6,0)]
    assert last[10, 15] == 0  # both wrapped: orig (0,0) with orig (1,1)
    assert torch.equal(last, last.T)
    # top-right window: columns 6,7 | 0,1 split, rows not
    assert mask[1][0, 1] == 0 and mask[1][0, 2] == MASK_VALUE and mask[1][0, 4] == 0
    # no shift on an axis -> no split along it
    assert (shift_window_mask(8, 8, (4, 4), (0, 0)) == 0).all()


def test_shifted_block_ignores_wrapped_tokens() -> None:
    torch.manual_seed(0)
    block = SwinTransformerBlock(8, 2, 4, shifted=True, mlp_ratio=2.0, drop_path_rate=0.0).eval()
    x = torch.randn(1, 8, 8, 8)  # (B, H, W, C)
    mask = shift_window_mask(8, 8, (4, 4), (2, 2))
    poked, near = x.clone(), x.clone()
    poked[0, 0, 0] = torch.randn(8) * 3  # wraps into the bottom-right window next to (7, 7)
    near[0, 6, 6] = torch.randn(8) * 3  # a true neighbour of (7, 7) in that window

    def change_at_7_7(changed: torch.Tensor, mask: torch.Tensor | None) -> float:
        diff = block(changed, (4, 4), (2, 2), mask) - block(x, (4, 4), (2, 2), mask)
        return diff[0, 7, 7].abs().max().item()

    with torch.no_grad():
        assert change_at_7_7(poked, mask) < 1e-6
        assert change_at_7_7(poked, None) > 1e-3  # the mask is what stops it
        assert change_at_7_7(near, mask) > 1e-3


def test_window_rules_and_small_window_bias_index() -> None:
    assert stage_window(56, 56, 7) == ((7, 7), (3, 3))
    assert stage_window(7, 7, 7) == ((7, 7), (0, 0))
    assert stage_window(3, 10, 7) == ((3, 7), (0, 3))
    full = relative_position_index((7, 7), (7, 7))
    sub = torch.tensor([r * 7 + c for r in range(3) for c in range(2)])
    assert torch.equal(relative_position_index((3, 2), (7, 7)), full[sub][:, sub])
    assert full.min() == 0 and full.max() == 13 * 13 - 1


@pytest.mark.parametrize("size", [(40, 56), (32, 32), (36, 20), (8, 12), (4, 4), (4, 64)])
def test_any_size(size: tuple[int, int]) -> None:
    model = tiny()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        stages = model.forward_stages(x)
        logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    for info, feat in zip(model.stage_info, stages, strict=True):
        expected = (-(-size[0] // info.stride), -(-size[1] // info.stride))  # ceil: merging pads odd maps
        assert feat.shape == (2, info.channels, *expected)


def test_train_step_at_odd_size() -> None:
    model = tiny(drop_path_rate=0.1).train()
    model(torch.randn(2, 3, 40, 56)).sum().backward()
    assert model.stages[1].blocks[1].attn.relative_position_bias_table.grad is not None


def test_check_input_size() -> None:
    model = tiny()
    with pytest.raises(ValueError, match=r"swin_t: image size 30x32 .*multiples of the patch size 4"):
        model.check_input_size(30, 32)
    with pytest.raises(ValueError, match="multiples of the patch size"):
        model(torch.randn(1, 3, 32, 34))
    with pytest.raises(ValueError, match="swin_t"):
        BACKBONES.build("swin_t", **{**TINY, "img_size": 30})
    with pytest.raises(ValueError, match="num_heads"):
        BACKBONES.build("swin_t", **{**TINY, "num_heads": (3, 2)})
    model.check_input_size(36, 20)


def test_stage_info_and_features() -> None:
    with torch.device("meta"):
        model = BACKBONES.build("swin_t")
    assert [(i.name, i.channels, i.stride) for i in model.stage_info] == [
        ("stages.0", 96, 4), ("stages.1", 192, 8), ("stages.2", 384, 16), ("stages.3", 768, 32)
    ]
    assert model.num_features == 768 and model.classifier_name == "head"
    modules = dict(model.named_modules())
    for info in model.stage_info:
        assert info.name in modules
    model = tiny()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (1, 8, 12, 32)  # (B, H/8, W/8, C), normed
        assert torch.allclose(model.forward_head(feats), model(x))
    model.reset_classifier(0)
    assert model(x).shape == (1, 32)
    model.reset_classifier(5)
    assert model(x).shape == (1, 5)


def test_slots() -> None:
    with torch.device("meta"):
        model = BACKBONES.build("swin_t")
    slots = {name: m for name, m in model.named_modules() if isinstance(m, AttentionSlot)}
    assert "stages.3.slot" in slots and "stages.0.blocks.1.slot" in slots and "input" in slots
    assert slots["input"].role == "input" and slots["input"].channels == 3
    assert slots["stages.3.slot"].role == "stage" and slots["stages.3.slot"].channels == 768
    assert slots["stages.2.blocks.5.slot"].role == "block" and slots["stages.2.blocks.5.slot"].channels == 384
    assert sum(s.role == "block" for s in slots.values()) == 12
    assert all(not s.filled for s in slots.values())


def test_filled_slots_and_pretrained(tmp_path) -> None:
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=10, **TIMM_TINY)
    path = tmp_path / "swin_tiny.pth"
    torch.save(ref.state_dict(), path)
    model = build_model(
        "swin_t", attn=[{"block": "se", "at": ["stages.*.blocks.*.slot", "stages.1.slot"]}], num_classes=10,
        img_size=32, backbone_args={k: v for k, v in TINY.items() if k != "img_size"}, pretrained=path,
    ).eval()
    assert model.stages[0].blocks[1].slot.filled and model.stages[1].slot.filled
    report = model.pretrained_report
    assert report.attention_initialised and not report.classifier_reinitialised and report.loaded > 0
    with torch.no_grad():
        out = model(torch.randn(2, 3, 40, 56))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
