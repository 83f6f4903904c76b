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
