"""Putting a block into a trained network: attn_init defaults, what trains, the load report, export, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import visattn
from visattn.config import ConfigError, make_config
from visattn.export import load_run
from visattn.models.detector import build_detector
from visattn.rundir import saved_config
from visattn.tasks import ClassificationModule
from visattn.tasks.common import make_optimizer
from visattn.tasks.finetune import attn_lr_scales, freeze_parameters
from visattn.training import train

TINY = {"base_width": 8}


def quick(tmp_path: Path, **overrides):
    values = dict(data="digits", backbone_args=TINY, img_size=16, epochs=1, batch_size=32, limit=96, num_workers=0,
                  out=str(tmp_path), lr=3e-3, warmup_epochs=0.5)
    values.update(overrides)
    return make_config({}, values)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A tiny trained network: the 'pretrained' file of the tests below."""
    out = tmp_path_factory.mktemp("base")
    metrics = train(quick(out, name="base"))
    return out / "base", metrics


def test_attn_init_defaults_to_identity_with_pretrained_and_says_so(tmp_path, capsys):
    weights = tmp_path / "w.pth"
    torch.save(visattn.build_model("resnet18", num_classes=10, backbone_args=TINY).state_dict(), weights)
    assert quick(tmp_path, attn="se").attn_init == "paper"
    assert capsys.readouterr().err.count("identity") == 0
    assert quick(tmp_path, attn="se", pretrained=str(weights)).attn_init == "identity"
    assert capsys.readouterr().err.count("start as the identity") == 1
    assert quick(tmp_path, attn="se", pretrained=str(weights), attn_init="paper").attn_init == "paper"
    with pytest.raises(ConfigError, match="attn_init must be one of auto, paper, identity"):
        quick(tmp_path, attn="se", attn_init="zero")
    with pytest.raises(ConfigError, match="freeze must be one of none, backbone"):
        quick(tmp_path, freeze="head")
    with pytest.raises(ConfigError, match="attn_lr_scale"):
        quick(tmp_path, attn_lr_scale=float("nan"))


def test_pretrained_run_reports_no_change_and_starts_at_the_base_accuracy(base_run, tmp_path, capsys):
    base_dir, base_metrics = base_run
    weights = str(base_dir / "checkpoints" / "best.ckpt")
    metrics = train(quick(tmp_path, name="ft", attn="cbam", pretrained=weights))
    err = capsys.readouterr().err
    assert "change the output by 0 (relative L2, the identity)" in err
    assert "before training (step 0)" in err
    info = metrics["pretrained"]
    assert info["attn_init"] == "identity" and info["output_change"] == 0.0 and info["loaded_tensors"] > 0
    assert info["at_start"]["test"]["acc"] == base_metrics["test"]["acc"]  # exactly the pretrained network
    assert yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())["attn_init"] == "identity"
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["pretrained"]["output_change"] == 0.0

    paper = train(quick(tmp_path, name="ft-paper", attn="cbam", pretrained=weights, attn_init="paper"))
    assert paper["pretrained"]["output_change"] > 1e-3  # the published gates start near 0.5
    assert paper["pretrained"]["attn_init"] == "paper"
    own = train(quick(tmp_path, name="ft-own", attn={"block": "cbam", "args": {"init": "paper"}}, pretrained=weights))
    assert own["pretrained"]["attn_init"] == "paper"  # the block's own init is what ran, not the run-wide default
    assert own["pretrained"]["output_change"] == paper["pretrained"]["output_change"]


def test_effective_init_reports_what_the_blocks_start_with():
    from visattn.config import effective_init

    assert effective_init("se", "identity") == "identity" and effective_init("none", "identity") is None
    assert effective_init({"block": "se", "args": {"init": "paper"}}, "identity") == "paper"
    mixed = [{"block": "se", "at": "layer1.*"}, {"block": "cbam", "args": {"init": "paper"}}]
    assert effective_init(mixed, "identity") == "identity+paper" and effective_init(None, "paper") is None


def test_identity_run_exports_and_reloads_with_its_init(base_run, tmp_path):
    base_dir, _ = base_run
    train(quick(tmp_path, name="ft", attn="se", pretrained=str(base_dir / "checkpoints" / "best.ckpt"), epochs=1))
    model, spec = load_run(tmp_path / "ft")
    assert spec.attn_init == "identity"
    assert {m.init for m in model.modules() if hasattr(m, "fc2")} == {"identity"}


def test_legacy_config_without_attn_init_resumes_as_paper(base_run, tmp_path):
    base_dir, _ = base_run
    values = yaml.safe_load((base_dir / "config.yaml").read_text())
    values.pop("attn_init")
    values.update(attn="se", pretrained=str(base_dir / "checkpoints" / "best.ckpt"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(values))
    assert saved_config(tmp_path).attn_init == "paper"  # what such a run was trained with


def test_freeze_backbone_trains_only_blocks_and_head():
    model = visattn.build_model("resnet18", num_classes=4, backbone_args=TINY, attn="se")
    frozen = freeze_parameters(model, "backbone")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".block." in name or name.startswith("fc.") for name in trainable)
    assert any(name.startswith("layer1.0.conv1") for name in frozen)
    optimizer = make_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.05, momentum=0.9)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable)

    detector = build_detector("csp_n", num_classes=2, img_size=64, attn="eca")
    freeze_parameters(detector, "backbone")
    trainable = {name for name, p in detector.named_parameters() if p.requires_grad}
    assert not any(n.startswith("backbone.") for n in trainable)
    assert any(n.startswith("neck.") for n in trainable) and any(n.startswith("head.") for n in trainable)


def test_freeze_bn_keeps_statistics_and_attn_lr_scale_scales_the_blocks():
    model = visattn.build_model("resnet18", num_classes=4, backbone_args=TINY, attn="cbam")
    for norm in model.modules():  # as trained: no zero-initialised last BatchNorm silencing the blocks' input
        if isinstance(norm, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(norm.weight)
    module = ClassificationModule(model, num_classes=4, img_size=16, freeze_bn=True, attn_lr_scale=3.0)
    module.train()
    before = model.bn1.running_mean.clone()
    block_bn = model.layer1[0].slot.block.spatial_gate.bn
    block_before = block_bn.running_mean.clone()
    model(torch.randn(4, 3, 16, 16))
    assert torch.equal(model.bn1.running_mean, before) and not model.bn1.training
    assert block_bn.training and not torch.equal(block_bn.running_mean, block_before)  # the block's own BN trains

    scales = attn_lr_scales(model, 3.0)
    assert scales and all(".block." in name for name in scales)
    optimizer = make_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.05, momentum=0.9, lr_multipliers=scales)
    by_name = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert by_name[id(params["layer1.0.slot.block.channel_gate.mlp.0.weight"])] == pytest.approx(3e-3)
    assert by_name[id(params["layer1.0.conv1.weight"])] == pytest.approx(1e-3)
