"""The model builder: slot filling, exact parameter counts, parity with timm/torchvision, local weights."""

from __future__ import annotations

import pytest
import torch

import visattn


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("backbone", "attn", "expected"),
    [
        ("resnet18", None, 11_689_512),
        ("resnet34", None, 21_797_672),
        ("resnet50", None, 25_557_032),
        ("resnet101", None, 44_549_160),
        ("resnet50", "se", 28_088_024),
        ("resnet50", "cbam", 28_089_624),
        ("resnet50", "eca", 25_557_118),
        ("resnet50", "none", 25_557_032),
    ],
)
def test_parameter_counts(backbone, attn, expected):
    assert n_params(visattn.build_model(backbone, attn=attn)) == expected


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_resnet50_state_dict_parity(source):
    if source == "timm":
        import timm

        ref = timm.create_model("resnet50", pretrained=False)
    else:
        import torchvision

        ref = torchvision.models.resnet50()
    ref.eval()
    ours = visattn.build_model("resnet50").eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_slots_listed_printed_and_state_dict_stable():
    empty = visattn.build_model("resnet18", num_classes=10)
    slots = visattn.list_slots(empty)
    names = [s.name for s in slots]
    assert names[0] == "input" and "layer1.0.slot" in names and "layer4.slot" in names
    assert {s.role for s in slots} == {"input", "block", "stage"}
    assert all(s.block is None for s in slots)
    assert "AttentionSlot(channels=512, role=block, empty)" in str(empty)
    filled = visattn.build_model("resnet18", num_classes=10, attn="se")
    own_keys = set(empty.state_dict())
    new_keys = set(filled.state_dict()) - own_keys
    assert own_keys <= set(filled.state_dict())
    assert new_keys and all(".slot.block." in k for k in new_keys)
    assert "se" in str(filled)


def test_default_slots_are_block_slots_and_globs_select():
    model = visattn.build_model(
        "resnet18", num_classes=10, attn=[{"block": "eca", "at": "layer4.*"}, {"block": "stn", "at": "input"}]
    )
    filled = {s.name: s.block for s in visattn.list_slots(model) if s.block}
    assert filled == {"input": "stn", "layer4.0.slot": "eca", "layer4.1.slot": "eca", "layer4.slot": "eca"}
    model = visattn.build_model("resnet18", num_classes=10, attn="cbam")
    filled = [s for s in visattn.list_slots(model) if s.block]
    assert len(filled) == 8 and all(s.role == "block" for s in filled)


def test_block_args_pass_through():
    model = visattn.build_model("resnet18", num_classes=10, attn={"block": "se", "at": "layer1.0.slot",
                                                                 "args": {"reduction": 4}})
    assert model.layer1[0].slot.block.fc1.out_channels == 16


def test_none_leaves_slots_empty():
    model = visattn.build_model("resnet18", attn="none")
    assert not any(s.block for s in visattn.list_slots(model))


@pytest.mark.parametrize("block", visattn.list_attention())
def test_every_block_fits_every_resnet_feature_slot(block):
    model = visattn.build_model("resnet18", num_classes=5, attn={"block": block, "at": "layer*"},
                                backbone_args={"base_width": 16})
    model.eval()
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5) and torch.isfinite(out).all()


def test_errors_name_the_problem_and_the_choices():
    with pytest.raises(KeyError, match="resnet50") as info:
        visattn.build_model("resnet5")
    assert "Did you mean" in str(info.value)
    with pytest.raises(KeyError, match="matches no slot") as info:
        visattn.build_model("resnet18", attn={"block": "se", "at": "stages.3.*"})
    assert "layer4.slot" in str(info.value)
    with pytest.raises(ValueError, match="filled twice"):
        visattn.build_model("resnet18", attn=[{"block": "se", "at": "layer4.*"}, {"block": "eca", "at": "layer4.0.*"}])
    with pytest.raises(ValueError, match="cannot put 'mhsa' in slot 'input' \\(3 channels\\)"):
        visattn.build_model("resnet18", attn={"block": "mhsa", "at": "input", "args": {"heads": 8}})
    with pytest.raises(KeyError, match="Did you mean 'at'"):
        visattn.build_model("resnet18", attn={"block": "se", "att": "input"})
    with pytest.raises(KeyError, match="unknown attention block 'sse'"):
        visattn.build_model("resnet18", attn="sse")
    with pytest.raises(TypeError, match="depht"):
        visattn.build_model("resnet18", backbone_args={"depht": 3})


# ---- pretrained weights from a local file ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_resnet18_file(tmp_path_factory):
    import timm

    ref = timm.create_model("resnet18", pretrained=False)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


def test_pretrained_loads_backbone_and_reports(timm_resnet18_file, tmp_path):
    ref, path = timm_resnet18_file
    model = visattn.build_model("resnet18", attn="se", num_classes=10, pretrained=path)
    report = model.pretrained_report
    assert report.classifier_reinitialised == ["fc.weight", "fc.bias"]
    assert len(report.attention_initialised) == 8 * 4  # fc1/fc2 weight+bias in 8 blocks
    assert "attention tensors left at init" in report.summary()
    torch.testing.assert_close(model.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)
    assert model.fc.out_features == 10
    # the same file as safetensors, same result
    from safetensors.torch import save_file

    st_path = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(st_path))
    again = visattn.build_model("resnet18", num_classes=1000, pretrained=st_path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), ref.eval()(x))


def test_pretrained_errors(timm_resnet18_file, tmp_path):
    _, path = timm_resnet18_file
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        visattn.build_model("resnet18", pretrained=tmp_path / "missing.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read weights"):
        visattn.build_model("resnet18", pretrained=corrupt)
    with pytest.raises(KeyError, match="Missing or mismatched backbone keys") as info:
        visattn.build_model("resnet34", pretrained=path)  # resnet18 weights do not fit resnet34
    assert "layer1.2.conv1.weight" in str(info.value)
    state = torch.load(path, weights_only=True)
    state["extra.weight"] = torch.zeros(3)
    odd = tmp_path / "odd.pth"
    torch.save(state, odd)
    with pytest.raises(KeyError, match="extra.weight"):
        visattn.build_model("resnet18", pretrained=odd)


def test_vit_pretrained_at_another_size_resamples_position_embedding(tmp_path):
    tiny = {"depth": 1, "embed_dim": 32, "num_heads": 2}
    source = visattn.build_model("vit_tiny", img_size=64, num_classes=4, backbone_args=tiny)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    model = visattn.build_model("vit_tiny", img_size=96, num_classes=4, backbone_args=tiny, pretrained=path)
    assert model.pos_embed.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    torch.testing.assert_close(model.pos_embed[:, 0], source.pos_embed[:, 0])  # class token position kept


def test_swin_pretrained_from_timm_checkpoint(tmp_path):
    import timm

    args = {"embed_dim": 16, "depths": (2, 2), "num_heads": (1, 2), "window_size": 4}
    ref = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, embed_dim=16,
                            depths=(2, 2), num_heads=(1, 2), window_size=4, num_classes=7).eval()
    path = tmp_path / "swin.pth"
    torch.save(ref.state_dict(), path)
    model = visattn.build_model("swin_t", img_size=64, num_classes=7, backbone_args=args, pretrained=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


TINY_FAMILIES = {
    "vit_tiny": {"img_size": 32, "backbone_args": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}},
    "swin_t": {"img_size": 32, "backbone_args": {"patch_size": 2, "window_size": 4, "embed_dim": 16,
                                                 "depths": (2, 2), "num_heads": (1, 2)}},
}


@pytest.mark.parametrize("family", sorted(TINY_FAMILIES))
@pytest.mark.parametrize("block", visattn.list_attention())
def test_every_block_fits_every_transformer_slot(family, block):
    spec = TINY_FAMILIES[family]
    model = visattn.build_model(family, num_classes=3, attn=block, img_size=spec["img_size"],
                                backbone_args=spec["backbone_args"]).eval()
    if block != "none":
        assert all(s.block == block for s in visattn.list_slots(model) if s.role == "block")
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_classification_metrics_are_independent():
    from visattn.tasks import ClassificationModule

    module = ClassificationModule(torch.nn.Identity(), num_classes=6, img_size=8)
    logits = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0, 1.0]]).repeat(4, 1)  # top-1 is class 1
    labels = torch.tensor([0, 0, 0, 0])  # right class is 6th of 6: outside the top 5
    module.test_metrics.update(logits, labels)
    values = {k: float(v) for k, v in module.test_metrics.compute().items()}
    assert values["test/acc"] == 0.0 and values["test/acc5"] == 0.0 and values["test/f1"] == 0.0
    module.test_metrics.reset()
    module.test_metrics.update(logits, torch.tensor([2, 2, 1, 1]))  # two right at top-1, all within top-5
    values = {k: float(v) for k, v in module.test_metrics.compute().items()}
    assert values["test/acc"] == 0.5 and values["test/acc5"] == 1.0 and values["test/f1"] < 0.5
