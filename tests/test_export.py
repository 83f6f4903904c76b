"""Export: every backbone family x every block to ONNX and TorchScript (verified), a run end to end, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import visattn
from visattn.config import make_config
from visattn.export import ExportError, ModelSpec, export_model, export_run
from visattn.models.build import list_slots
from visattn.predict import predict_folder
from visattn.training import train

FAMILIES = {
    "resnet18": (64, {"base_width": 8}),  # 64: the last stage is 2x2 (STN on a 1x1 map does not export)
    "vit_tiny": (32, {"patch_size": 8, "depth": 6, "embed_dim": 32, "num_heads": 2}),  # a slot for each block
    # 64x64 with patch 2 and window 4: stage maps 32x32 and 16x16, so shifted windows and the shift mask run
    "swin_t": (64, {"patch_size": 2, "window_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2]}),
}
OTHER_BACKBONES = {
    "resnet34": (32, {"base_width": 8}), "resnet50": (32, {"base_width": 8}), "resnet101": (32, {"base_width": 8}),
    "vit_small": (32, {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}),
    "vit_base": (32, {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}),
    "csp_n": (64, {}), "csp_s": (64, {}),
    "swin_s": (64, {"patch_size": 2, "window_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2]}),
}


def spec_for(backbone: str, attn, size: int, args: dict) -> ModelSpec:
    return ModelSpec(task="classify", backbone=backbone, attn=attn, num_classes=5, in_chans=3, img_size=size,
                     backbone_args=args, class_names=[], mean=[0.5] * 3, std=[0.25] * 3)


def check_export(tmp_path: Path, backbone: str, attn, size: int, args: dict) -> dict:
    spec = spec_for(backbone, attn, size, args)
    torch.manual_seed(0)
    model = spec.build().eval()
    for module in model.modules():  # leave the identity initialisations so the blocks actually compute
        if isinstance(module, torch.nn.Linear) and module.weight.abs().sum() == 0:
            torch.nn.init.normal_(module.weight, std=0.02)
    report = export_model(model, spec, tmp_path, formats=["onnx", "torchscript"], dynamic_batch=True)
    for fmt in ("onnx", "torchscript"):
        checks = report["formats"][fmt]["checks"]
        assert report["formats"][fmt]["passed"]
        assert {c["batch"] for c in checks} == {1, 2}
        assert all(c["max_abs_diff"] <= 1e-4 and c["top1_agreement"] == 1.0 for c in checks)
    return report


def every_block_once(model: torch.nn.Module) -> list[dict[str, str]]:
    """An attn spec that puts each block in a slot of its own: STN on the input, the others round the inner slots.

    One export per family then covers every block in that family: the dynamo ONNX exporter costs seconds per
    graph, and a failing block is named by its slot's module path in the error."""
    blocks = [b for b in visattn.list_attention() if b not in ("none", "stn")]
    inner = [s.name for s in list_slots(model) if s.name != "input"]
    if len(inner) < len(blocks):
        raise ValueError(f"{len(inner)} slots cannot hold the {len(blocks)} blocks {blocks}")
    spec = [{"block": "stn", "at": "input"}]
    return spec + [{"block": block, "at": slot} for block, slot in zip(blocks, inner, strict=False)]


@pytest.mark.parametrize("which", ["none", "every block"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_and_block_exports(tmp_path, family, which):
    size, args = FAMILIES[family]
    attn = "none" if which == "none" else every_block_once(spec_for(family, "none", size, args).build())
    check_export(tmp_path, family, attn, size, args)
    if which != "none":
        filled = {s.block for s in list_slots(spec_for(family, attn, size, args).build()) if s.block}
        assert filled == set(visattn.list_attention()) - {"none"}


@pytest.mark.parametrize("backbone", sorted(OTHER_BACKBONES))
def test_other_backbones_export(tmp_path, backbone):
    size, args = OTHER_BACKBONES[backbone]
    check_export(tmp_path, backbone, "cbam", size, args)


def test_every_registered_backbone_is_covered():
    assert set(FAMILIES) | set(OTHER_BACKBONES) >= set(visattn.list_backbones())


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = make_config({}, dict(backbone="resnet18", attn={"block": "stn", "at": "input"}, data="digits",
                                  img_size=32, epochs=1, batch_size=32, limit=64, num_workers=0, out=str(out),
                                  name="run", backbone_args={"base_width": 8}))
    train(config)
    return out / "run"


def test_run_exports_verifies_reloads_and_predicts(trained_run, tmp_path):
    report = export_run(trained_run, formats="onnx,torchscript,safetensors", dynamic_batch=True)
    export = trained_run / "export"
    on_disk = json.loads((export / "report.json").read_text())
    assert on_disk["real_images"] is True and set(on_disk["formats"]) == {"onnx", "torchscript", "safetensors"}
    assert report["formats"]["safetensors"]["checks"][0]["max_abs_diff"] == 0.0
    assert not list(trained_run.glob(".export-*"))
    model = visattn.load(export)
    from_run = visattn.load(trained_run)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), from_run(x), rtol=0, atol=0)
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 80, 30, 200)).save(images / f"{i}.png")
    rows = predict_folder(export / "model.onnx", images, out_csv=tmp_path / "p.csv")
    assert len(rows) == 3 and all(0.0 < r["probability"] <= 1.0 for r in rows)
    assert {r["class"] for r in rows} <= set(json.loads((export / "model.json").read_text())["class_names"])
    same = predict_folder(export, images)
    assert [r["index"] for r in same] == [r["index"] for r in rows]
    assert (tmp_path / "p.csv").read_text().startswith("image,class,index,probability")


def test_export_bad_input(trained_run, tmp_path):
    with pytest.raises(ValueError, match="unknown export format 'onxx'.*Did you mean 'onnx'"):
        export_run(trained_run, formats="onxx")
    with pytest.raises(ValueError, match="opset 15 is too old.*grid_sample"):
        export_run(trained_run, formats="onnx", opset=15)
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.yaml").write_text((trained_run / "config.yaml").read_text())
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        export_run(empty)
    (empty / "checkpoints").mkdir()
    (empty / "checkpoints" / "best.ckpt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read weights"):
        export_run(empty)
    assert not (empty / "export").exists() and not list(empty.glob(".export-*"))
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        export_run(tmp_path)
    onnx_only = tmp_path / "onnx_only"
    onnx_only.mkdir()
    (onnx_only / "model.json").write_text((trained_run / "export" / "model.json").read_text())
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        visattn.load(onnx_only)


def test_mismatch_fails_with_numbers_and_leaves_export_untouched(trained_run, monkeypatch):
    import visattn.export as export_module

    export_run(trained_run, formats="torchscript")
    before = {p.name: p.stat().st_mtime_ns for p in (trained_run / "export").iterdir()}
    monkeypatch.setattr(export_module, "compare", lambda name, exported, eager, tol: {
        "input": name, "batch": 1, "max_abs_diff": 0.5, "top1_agreement": 0.0, "passed": False})
    with pytest.raises(ExportError, match="does not match eager within 0.0001: max abs diff .*0.5"):
        export_run(trained_run, formats="torchscript,safetensors")
    assert {p.name: p.stat().st_mtime_ns for p in (trained_run / "export").iterdir()} == before
    assert not list(trained_run.glob(".export-*"))


def test_half_export_verifies_against_half_eager(tmp_path):
    spec = spec_for("resnet18", "cbam", 32, {"base_width": 8})
    torch.manual_seed(0)
    report = export_model(spec.build(), spec, tmp_path, formats=["onnx", "torchscript"], dynamic_batch=True,
                          half=True)
    assert report["dtype"] == "torch.float16" and report["tolerance"] == 5e-2
    import onnx

    graph = onnx.load(str(tmp_path / "model.onnx"))
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    for fmt in ("onnx", "torchscript"):
        assert all(c["passed"] and c["top1_agreement"] == 1.0 for c in report["formats"][fmt]["checks"])
