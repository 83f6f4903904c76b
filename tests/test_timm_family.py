"""timm:<name> backbones: slot discovery over the zoo, exactly timm's logits when empty, every block in every role,
export, weights from a timm state dict, detection, and the errors."""

from __future__ import annotations

import itertools

import pytest
import timm
import torch

import visattn
from visattn.backbones.timm_family import BRANCH_POINTS, TimmBackbone
from visattn.export import ModelSpec, export_model
from visattn.models.build import list_slots
from visattn.registry import BACKBONES

# timm name -> (image size, timm_args, expected slot count per role): the smallest variants, shrunk where timm allows
FAMILIES: dict[str, tuple[int, dict, dict[str, int]]] = {
    "resnet18": (32, {}, {"stage": 5, "after_block": 8, "block": 8}),  # act1 (the stem) is stages.0
    "convnext_atto": (32, {}, {"stage": 4, "after_block": 12, "block": 12}),
    "efficientnet_b0": (32, {}, {"stage": 5, "after_block": 16, "block": 16}),
    "mobilenetv3_small_050": (32, {}, {"stage": 5, "after_block": 12, "block": 11}),  # its last block is a ConvBnAct
    "regnetx_002": (32, {}, {"stage": 5, "after_block": 13, "block": 13}),
    "resnest14d": (32, {}, {"stage": 5, "after_block": 4, "block": 4}),
    "rexnetr_100": (32, {}, {"stage": 5, "after_block": 16, "block": 16}),
    "ghostnet_050": (32, {}, {"stage": 5, "after_block": 12, "block": 12}),  # blocks.8-9 run after the last feature
    "efficientvit_b0": (32, {}, {"stage": 4, "after_block": 10, "block": 10}),
    "efficientvit_m0": (64, {}, {"stage": 3, "after_block": 6, "block": 6}),
    "mobilevit_xxs": (64, {}, {"stage": 5, "after_block": 10, "block": 7}),  # MobileViT blocks have no known branch
    "vit_tiny_patch16_224": (32, {"depth": 2, "embed_dim": 32, "num_heads": 2}, {"stage": 2, "after_block": 2,
                                                                                 "block": 2}),
    "swin_tiny_patch4_window7_224": (32, {"window_size": 4, "embed_dim": 16, "depths": (2, 2, 2, 2),
                                          "num_heads": (1, 1, 2, 2)}, {"stage": 4, "after_block": 8, "block": 8}),
}
BLOCKS = [b for b in visattn.list_attention() if b != "none"]
ROLES = ("input", "stage", "after_block", "block")
ROLE_GLOBS = {"input": "input", "stage": "stages.[0-9].slot", "after_block": "stages.*.blocks.*.slot",
              "block": "stages.*.blocks.*.branch"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny convs run fastest on one thread


def build(name: str, **kwargs) -> TimmBackbone:
    size, args, _ = FAMILIES[name]
    return visattn.build_model(f"timm:{name}", num_classes=5, img_size=size,
                               backbone_args={"timm_args": args} if args else None, **kwargs)


def plain_timm(name: str) -> torch.nn.Module:
    size, args, _ = FAMILIES[name]
    fixed = timm.models.get_pretrained_cfg(name).fixed_input_size
    return timm.create_model(name, num_classes=5, **args, **({"img_size": size} if fixed else {}))


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_slots_are_found_and_empty_slots_give_timms_logits(name):
    size, _, expected = FAMILIES[name]
    torch.manual_seed(0)
    model = build(name).eval()
    torch.manual_seed(0)
    reference = plain_timm(name).eval()
    roles: dict[str, int] = {}
    for slot in list_slots(model):
        roles[slot.role] = roles.get(slot.role, 0) + 1
    assert roles == {"input": 1, **expected}
    names = [s.name for s in list_slots(model)]
    assert names[0] == "input" and all(f"stages.{i}.slot" in names for i in range(len(model.stage_info)))
    assert len(model.stage_info) == len(reference.feature_info) == expected["stage"]
    assert model.default_slot_role == "block"
    assert list(model.state_dict()) == [f"model.{key}" for key in reference.state_dict()]  # no key from the slots
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))  # same init from the same seed, and the same computation
        stages = model.forward_stages(x)
        timm_stages = reference.forward_intermediates(x, intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(stages, timm_stages, strict=True))


def role_blocks(index: int) -> dict[str, str]:
    """Family ``index``'s block per role, rotated so that the families together put every block in every role."""
    return {role: BLOCKS[(index + offset) % len(BLOCKS)] for offset, role in enumerate(ROLES)}


def test_the_rotation_covers_every_block_in_every_role():
    pairs = {(block, role) for i in range(len(FAMILIES)) for role, block in role_blocks(i).items()}
    assert pairs == set(itertools.product(BLOCKS, ROLES))


@pytest.mark.parametrize("index", range(len(FAMILIES)), ids=sorted(FAMILIES))
def test_blocks_fit_every_role_forward_and_backward(index):
    name = sorted(FAMILIES)[index]
    size = FAMILIES[name][0]
    plan = role_blocks(index)
    model = build(name, attn=[{"block": block, "at": ROLE_GLOBS[role]} for role, block in plan.items()]).train()
    assert {s.role: s.block for s in list_slots(model)} == plan
    x = torch.randn(2, 3, size, size)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    for slot_name, slot in model.named_modules():
        if isinstance(slot, visattn.layers.AttentionSlot) and slot.block is not None:
            grads = [p.grad for p in slot.block.parameters() if p.requires_grad]
            assert all(g is not None and torch.isfinite(g).all() for g in grads), slot_name
    assert all(p.grad is not None for p in model.model.get_classifier().parameters())


# timm's own graph dominates the ONNX export time, so the exported models are the shallowest: one block per stage
EXPORTED = {
    "resnet10t": {},  # (B, C, H, W), branch after bn2
    "convnext_atto": {"depths": (1, 1, 1, 1)},  # branch before drop_path (a forward pre-hook)
    "vit_tiny_patch16_224": FAMILIES["vit_tiny_patch16_224"][1],  # tokens with a class token
}


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_export_onnx_torchscript_safetensors(tmp_path, name):
    attn = [{"block": "cbam", "at": "stages.*.blocks.0.branch"}, {"block": "eca", "at": "stages.[0-9].slot"},
            {"block": "se", "at": "stages.1.blocks.0.slot"}, {"block": "stn", "at": "input"}]
    spec = ModelSpec(task="classify", backbone=f"timm:{name}", attn=attn, num_classes=5, in_chans=3, img_size=32,
                     backbone_args={"timm_args": EXPORTED[name]} if EXPORTED[name] else {}, class_names=[],
                     mean=[0.5] * 3, std=[0.25] * 3)
    torch.manual_seed(0)
    model = spec.build().eval()
    assert {s.block for s in list_slots(model)} == {None, "cbam", "eca", "se", "stn"}
    report = export_model(model, spec, tmp_path, formats=["onnx", "torchscript", "safetensors"], dynamic_batch=True)
    for fmt in ("onnx", "torchscript", "safetensors"):
        assert report["formats"][fmt]["passed"]
        assert all(c["max_abs_diff"] <= 1e-4 for c in report["formats"][fmt]["checks"])
    assert {c["batch"] for c in report["formats"]["onnx"]["checks"]} == {1, 2}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_state_dict_loads_through_pretrained(tmp_path, suffix):
    reference = timm.create_model("convnext_atto")
    state = reference.state_dict()
    path = tmp_path / f"convnext_atto{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    same = visattn.build_model("timm:convnext_atto", pretrained=path).eval()
    assert same.pretrained_report.loaded == len(state)  # every tensor, nothing missing (missing would raise)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(same(x), reference.eval()(x))
    other = visattn.build_model("timm:convnext_atto", num_classes=7, attn="cbam", pretrained=path)
    report = other.pretrained_report
    assert report.loaded == len(state) - 2
    assert report.classifier_reinitialised == ["model.head.fc.weight", "model.head.fc.bias"]
    assert report.attention_initialised and all(k.startswith("stages.") for k in report.attention_initialised)
    overlay = visattn.build_model("timm:convnext_atto", backbone_args={"pretrained_cfg_overlay": {"file": str(path)}})
    assert overlay.pretrained_report.loaded == len(state)
    with pytest.raises(ValueError, match="twice"):
        visattn.build_model("timm:convnext_atto", pretrained=path,
                            backbone_args={"pretrained_cfg_overlay": {"file": str(path)}})
    with pytest.raises(ValueError, match="nothing is downloaded"):
        visattn.build_model("timm:convnext_atto", backbone_args={"pretrained_cfg_overlay": {"url": "https://x"}})


def test_inserted_blocks_start_as_the_identity_with_pretrained(tmp_path):
    """A timm overlay file in a run's config is its pretrained file, so attn_init auto starts the blocks as the
    identity: the pretrained network's output is unchanged, in every slot role."""
    from visattn.config import make_config
    from visattn.models.weights import measure_output_change

    path = tmp_path / "convnext_atto.pth"
    torch.save(timm.create_model("convnext_atto").state_dict(), path)
    config = make_config({}, {"backbone": "timm:convnext_atto", "attn": "cbam", "img_size": 32,
                              "backbone_args": {"pretrained_cfg_overlay": {"file": str(path)}}})
    assert (config.pretrained, config.attn_init, config.backbone_args) == (str(path), "identity", {})
    attn = [{"block": block, "at": ROLE_GLOBS[role]} for role, block in
            zip(ROLES, ("spatial_gate", "eca", "se", "cbam"), strict=True)]
    model = visattn.build_model(config.backbone, attn=attn, num_classes=1000, pretrained=config.pretrained,
                                attn_init=config.attn_init, backbone_args=config.backbone_args)
    assert {s.block for s in list_slots(model)} == {"spatial_gate", "eca", "se", "cbam"}
    assert measure_output_change(model, torch.randn(2, 3, 32, 32)) < 1e-6
    assert "attention tensors left at init (input, stages.0.blocks.0.branch" in model.pretrained_report.summary()


def test_pretrained_adapts_to_another_size_and_channel_count(tmp_path):
    """timm's own checkpoint_filter_fn resamples a ViT's position embedding; the stem follows in_chans."""
    path = tmp_path / "vit.pth"
    torch.save(timm.create_model("vit_tiny_patch16_224", depth=2).state_dict(), path)
    model = visattn.build_model("timm:vit_tiny_patch16_224", img_size=32, in_chans=1, num_classes=3,
                                backbone_args={"timm_args": {"depth": 2}}, pretrained=path)
    assert model.model.pos_embed.shape == (1, 1 + 4, 192)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    wrapped = tmp_path / "wrapped.pth"  # the wrapper's own state dict (keys model.* and stages.*) loads back
    torch.save(visattn.build_model("timm:convnext_atto", attn="se", num_classes=3).state_dict(), wrapped)
    again = visattn.build_model("timm:convnext_atto", attn="se", num_classes=3, pretrained=wrapped)
    assert again.pretrained_report.attention_initialised == []


def test_detection_on_timm_features():
    from visattn.models.detector import build_detector

    detector = build_detector("timm:convnext_atto", num_classes=3, img_size=64, attn="cbam")
    assert [s.stride for s in detector.backbone.stage_info] == [4, 8, 16, 32]
    raw = detector.train()(torch.randn(2, 3, 64, 64))
    assert [tuple(r.shape[-2:]) for r in raw] == [(8, 8), (4, 4), (2, 2)]
    sum(r.float().mean() for r in raw).backward()
    vit = build_detector("timm:vit_tiny_patch16_224", num_classes=3, img_size=64,
                         backbone_args={"timm_args": {"depth": 3, "embed_dim": 32, "num_heads": 2}})
    assert vit.neck.inputs.indices == [2]  # every block is a stride-16 feature: the deepest one feeds the neck


def test_count_reports_each_slot_and_an_empty_model_costs_what_timm_does():
    empty = visattn.count(build("convnext_atto"), input_size=(1, 3, 32, 32))
    plain = visattn.count(plain_timm("convnext_atto"), input_size=(1, 3, 32, 32))
    assert (empty.params, empty.macs) == (plain.params, plain.macs)
    filled = visattn.count(build("convnext_atto", attn="se"), input_size=(1, 3, 32, 32))
    assert len(filled.attention_blocks) == 12 and filled.attention_params > 0 and filled.attention_macs > 0
    assert filled.params == plain.params + filled.attention_params


def test_prefix_family_in_the_registry():
    assert not any(n.startswith("timm:") for n in visattn.list_backbones())
    assert BACKBONES.families() == ["timm:<name> (any of timm.list_models())"]
    assert BACKBONES.get("timm:convnext_atto").__name__ == "timm:convnext_atto"
    with pytest.raises(KeyError, match=r"timm:<name>"):
        BACKBONES.get("timmy:resnet18")


def test_errors_name_the_problem():
    with pytest.raises(KeyError, match=r"Nearest timm names: timm:convnext_atto") as info:
        visattn.build_model("timm:convnext_atoo")
    assert "timm.list_models()" in str(info.value)
    with pytest.raises(TypeError, match="window_sise"):
        visattn.build_model("timm:swin_tiny_patch4_window7_224", img_size=32,
                            backbone_args={"timm_args": {"window_sise": 4}})
    with pytest.raises(ValueError, match="timm_args must not set num_classes"):
        visattn.build_model("timm:convnext_atto", backbone_args={"timm_args": {"num_classes": 3}})
    with pytest.raises(KeyError, match="matches no slot"):
        visattn.build_model("timm:convnext_atto", attn={"block": "se", "at": "layer*"})
    model = build("vit_tiny_patch16_224")
    with pytest.raises(ValueError, match="built for 32x32"):
        model.check_input_size(64, 64)


def without_feature_info(monkeypatch: pytest.MonkeyPatch, change) -> None:  # noqa: ANN001
    create = timm.create_model

    def patched(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        model = create(*args, **kwargs)
        change(model)
        return model

    monkeypatch.setattr(timm, "create_model", patched)


def test_a_model_whose_features_cannot_be_found_is_a_clear_error(monkeypatch):
    without_feature_info(monkeypatch, lambda model: delattr(model, "feature_info"))
    with pytest.raises(ValueError, match="reports no feature_info"):
        visattn.build_model("timm:resnet18")
    monkeypatch.undo()
    without_feature_info(monkeypatch, lambda model: model.feature_info[1].update(module="layer9"))
    with pytest.raises(ValueError, match="names module .layer9., which the model does not have.*cannot wrap"):
        visattn.build_model("timm:resnet18")


def test_branch_points_name_real_timm_classes():
    import importlib

    for path, (submodule, when) in BRANCH_POINTS.items():
        module, _, name = path.rpartition(".")
        assert hasattr(importlib.import_module(module), name), path
        assert when in ("after", "before") and submodule


def test_default_slots_fall_back_to_the_slots_a_model_has():
    """The default slots: the block role where the branch is known, else after each block (FastViT), else after
    each stage (a DenseNet's dense blocks are not sequences of blocks)."""
    fastvit = visattn.build_model("timm:fastvit_t8", num_classes=3, img_size=64)
    assert fastvit.default_slot_role == "after_block" and "block" not in {s.role for s in list_slots(fastvit)}
    densenet = visattn.build_model("timm:densenet121", num_classes=3, img_size=32, attn="eca")
    assert densenet.default_slot_role == "stage"
    assert {s.role for s in list_slots(densenet) if s.block} == {"stage"}


def test_models_and_places_that_get_no_slot_say_why():
    """Real timm models: HRNet's feature_info names modules it does not have (refused); EfficientViM's stages and
    blocks return tuples (only the input slot); GhostNet's last blocks run after its last reported feature."""
    with pytest.raises(ValueError, match="feature_info names module 'stem', which the model does not have"):
        visattn.build_model("timm:hrnet_w18_small", num_classes=3)
    vim = visattn.build_model("timm:efficientvim_m1", num_classes=3)
    assert [s.name for s in list_slots(vim)] == ["input"]
    assert vim.unslotted and all("tuple, not a tensor" in why for why in vim.unslotted.values())
    with pytest.raises(KeyError, match="no slots with role 'block'; its slots: input"):
        visattn.fill_slots(vim, "se", default_role=vim.default_slot_role)
    ghost = build("ghostnet_050")
    assert set(ghost.unslotted) == {"blocks.8.0", "blocks.8.1", "blocks.8.2", "blocks.8.3", "blocks.9.0"}
    assert all("after the last feature" in why for why in ghost.unslotted.values())



def test_attention_maps_and_grad_cam_on_a_timm_model():
    from visattn.viz import capture
    from visattn.viz.gradcam import grad_cam
    from visattn.viz.measure import model_stages, spatial_maps, stage_maps

    model = build("convnext_atto", attn="cbam").eval()
    assert model_stages(model) == [f"stages.{i}" for i in range(4)]
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), capture(model) as maps:
        model(images)
    spatial = spatial_maps(maps)
    assert set(spatial) == {s.name for s in list_slots(model) if s.block}
    assert set(stage_maps(spatial, model_stages(model), (32, 32), slot_keys=maps.slot_keys)) == set(
        model_stages(model))
    cam, logits = grad_cam(model, images)
    assert cam.shape == (2, 32, 32) and logits.shape == (2, 5) and torch.isfinite(cam).all()


def test_command_line_profile_and_run_name(capsys):
    from visattn.cli.profile import main as profile_main
    from visattn.cli.train import main as train_main

    profile_main(["--backbone", "timm:convnext_atto", "--attn", "se", "--img-size", "32", "--num-classes", "10",
                  "--repeats", "1", "--warmup", "0", "--train-steps", "0"])
    out = capsys.readouterr().out
    assert "timm:convnext_atto + se" in out and "stages.3.blocks.1.branch [se]" in out
    train_main(["--backbone", "timm:convnext_atto", "--attn", "cbam", "--data", "cluttered-digits", "--print-config"])
    assert "backbone: timm:convnext_atto" in capsys.readouterr().out
    from visattn.config import make_config

    assert make_config({}, {"backbone": "timm:convnext_atto", "attn": "cbam"}).run_name() == (
        "digits-timm-convnext_atto-cbam-s0")  # no ':' in a folder name


def test_the_timm_sweep_config_expands_to_its_grid(tmp_path, capsys):
    """The committed timm sweep config parses and plans backbone x blocks x seeds (nothing is trained)."""
    from pathlib import Path

    from visattn.cli.sweep import main as sweep_main

    config = Path(__file__).parent.parent / "configs" / "sweeps" / "cluttered_timm_regnetx002.yaml"
    assert sweep_main(["--config", str(config), "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "12 runs into" in out
    assert all(f"timm_regnetx_002-{block}-s{seed}" in out for block in ("none", "se", "eca", "cbam")
               for seed in range(3))
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
