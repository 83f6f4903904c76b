"""Detection export: decoding and NMS in the ONNX graph, verified against eager; a trained run exported, predicted."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torchvision.ops import batched_nms

import visattn
from visattn.config import make_config
from visattn.export import ExportError, ModelSpec, export_model, export_run
from visattn.models.build import list_slots
from visattn.models.detector import DetectorWithNMS, split_detections
from visattn.ops import nms_select
from visattn.predict import predict_folder
from visattn.training import train

DETECTORS = {  # backbone -> (input size, backbone_args): small widths, all three strides present
    "csp_n": (64, {}),
    "resnet18": (64, {"base_width": 8}),
    "swin_t": (64, {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 2}),
    "vit_tiny": (64, {"depth": 1, "embed_dim": 32, "num_heads": 2}),
}


def detect_spec(backbone: str, attn, size: int, args: dict, **extra) -> ModelSpec:
    return ModelSpec(task="detect", backbone=backbone, attn=attn, num_classes=3, in_chans=3, img_size=size,
                     backbone_args=args, class_names=["a", "b", "c"], mean=[0.5] * 3, std=[0.25] * 3, neck="pan",
                     scale="n", **extra)


def test_nms_select_matches_torchvision_batched_nms():
    torch.manual_seed(0)
    xy = torch.rand(2, 50, 2) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(2, 50, 2) * 20], dim=-1)  # (2, 50, 4)
    scores = torch.rand(2, 3, 50)  # (B, C, A)
    selected = nms_select(boxes, scores, 100, 0.5, 0.3)
    assert selected.dtype == torch.int64 and selected.shape[1] == 3
    for image in range(2):
        class_scores = scores[image]  # (C, A)
        cls, anchor = (class_scores > 0.3).nonzero(as_tuple=True)
        keep = batched_nms(boxes[image, anchor], class_scores[cls, anchor], cls, 0.5)
        expected = {(int(cls[k]), int(anchor[k])) for k in keep}
        rows = selected[selected[:, 0] == image]
        assert {(int(c), int(a)) for _, c, a in rows.tolist()} == expected
    capped = nms_select(boxes, scores, 2, 0.5, 0.3)
    for image in range(2):
        for cls in range(3):
            assert int(((capped[:, 0] == image) & (capped[:, 1] == cls)).sum()) <= 2


def spread_scores(model: torch.nn.Module) -> None:
    """An untrained detector in eval mode gives one score for every anchor (BatchNorm's running statistics are
    still 1 and 0, so activations fade layer by layer), and NMS's choice among ties is arbitrary. Set the
    statistics from two batches and spread the class scores around 0.2-0.5."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(seed)))
    model.eval()
    for branch in model.head.cls_branches:
        torch.nn.init.normal_(branch[-1].weight, std=0.3)
        torch.nn.init.uniform_(branch[-1].bias, -2.0, 0.0)


@pytest.mark.parametrize("backbone", sorted(DETECTORS))
def test_detector_exports_with_nms_in_onnx(tmp_path, backbone):
    size, args = DETECTORS[backbone]
    spec = detect_spec(backbone, "cbam", size, args, conf_threshold=0.2)
    torch.manual_seed(0)
    model = spec.build().eval()
    spread_scores(model)
    report = export_model(model, spec, tmp_path, formats=["onnx", "torchscript", "safetensors"], dynamic_batch=True)
    assert report["nms"]["onnx"].startswith("in the graph")
    for fmt in ("onnx", "torchscript", "safetensors"):
        checks = report["formats"][fmt]["checks"]
        assert {c["batch"] for c in checks} == {1, 2}
        assert all(c["passed"] and c["max_abs_diff"] <= 1e-4 and c["box_agreement"] == 1.0 for c in checks)
        assert all(c["detections"] > 0 for c in checks), "the check must compare actual boxes"
    import onnx

    graph = onnx.load(str(tmp_path / "model.onnx"))
    assert "NonMaxSuppression" in {node.op_type for node in graph.graph.node}
    assert [o.name for o in graph.graph.output] == ["decoded", "detections"]


def test_every_block_in_the_neck_exports(tmp_path):
    """Every block (cbam: above) in a neck slot of its own, one export: the dynamo exporter costs seconds per
    graph, and a failing block is named by its slot's module path in the error."""
    size, args = DETECTORS["csp_n"]
    blocks = [b for b in visattn.list_attention() if b not in ("none", "cbam")]
    neck_slots = [s.name for s in list_slots(detect_spec("csp_n", "none", size, args).build())
                  if s.name.startswith("neck.")]
    attn = [{"block": block, "at": slot} for block, slot in zip(blocks, neck_slots, strict=False)]
    spec = detect_spec("csp_n", attn, size, args, conf_threshold=0.2)
    assert {s.block for s in list_slots(spec.build()) if s.block} == set(blocks)
    torch.manual_seed(0)
    model = spec.build().eval()
    spread_scores(model)
    report = export_model(model, spec, tmp_path, formats=["onnx"], dynamic_batch=True)
    assert all(c["passed"] and c["box_agreement"] == 1.0 and c["detections"] > 0
               for c in report["formats"]["onnx"]["checks"])


def test_detector_with_nms_agrees_with_postprocess():
    size, args = DETECTORS["csp_n"]
    torch.manual_seed(1)
    model = detect_spec("csp_n", None, size, args).build().eval()
    spread_scores(model)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        decoded, detections = DetectorWithNMS(model, conf_threshold=0.2, iou_threshold=0.5, max_det=300)(x)
        reference = model.postprocess(decoded, conf_threshold=0.2, iou_threshold=0.5, max_det=300,
                                      multi_label=True)
    for ours, theirs in zip(split_detections(detections, 2, max_det=300), reference, strict=True):
        assert len(ours["scores"]) == len(theirs["scores"]) > 0
        torch.testing.assert_close(ours["scores"].sort().values, theirs["scores"].sort().values)


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = make_config({}, dict(task="detect", backbone="csp_n", attn="eca", img_size=64, epochs=1, batch_size=8,
                                  num_workers=0, out=str(out), name="det",
                                  data_args={"num_train": 16, "num_val": 8, "num_test": 8,
                                             "cache_dir": str(out / "cache")}))
    train(config)
    return out / "det"


def test_detection_run_exports_and_predicts_with_boxes_drawn(detect_run, tmp_path):
    report = export_run(detect_run, formats="onnx,torchscript,safetensors", dynamic_batch=True)
    assert report["real_images"] is True
    export = detect_run / "export"
    spec = json.loads((export / "model.json").read_text())
    assert spec["task"] == "detect" and spec["num_classes"] == 4 and spec["class_names"][0] == "circle"
    model = visattn.load(export)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), visattn.load(detect_run)(x), rtol=0, atol=0)
    images = sorted((next((detect_run.parent / "cache").glob("shapes-*")) / "images" / "test").glob("*.png"))[:3]
    folder = tmp_path / "images"
    folder.mkdir()
    for path in images:
        (folder / path.name).write_bytes(path.read_bytes())
    from PIL import Image

    Image.new("RGB", (96, 48), (200, 200, 200)).save(folder / "wide.png")  # letterboxed, boxes mapped back
    saved = tmp_path / "drawn"
    rows = predict_folder(export / "model.onnx", folder, save_dir=saved, out_csv=tmp_path / "boxes.csv",
                          conf_threshold=0.25)
    from visattn.rundir import OUTPUT_MARKER  # predict marks the folder it writes (issue 24)

    drawn = sorted(p.name for p in saved.iterdir() if p.name != OUTPUT_MARKER)
    assert drawn == sorted(p.name for p in folder.iterdir())
    assert (saved / OUTPUT_MARKER).is_file()
    assert all(p.stat().st_size > 0 for p in saved.iterdir())
    with open(tmp_path / "boxes.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    for row in rows:
        assert row["score"] >= 0.25 and row["class"] in spec["class_names"]
        width = 96 if row["image"].endswith("wide.png") else 64
        assert 0 <= row["x0"] <= row["x1"] <= width
    same = predict_folder(export, folder, conf_threshold=0.25)  # safetensors + torchvision NMS outside
    assert len(same) == len(rows)
    with pytest.raises(ValueError, match="below the 0.25 this ONNX file was exported with"):
        predict_folder(export / "model.onnx", folder, conf_threshold=0.1)


def test_detection_export_mismatch_reports_box_agreement(detect_run, monkeypatch):
    import visattn.export as export_module

    monkeypatch.setattr(export_module, "detection_agreement", lambda exported, eager: 0.5)
    with pytest.raises(ExportError, match="box agreement"):
        export_run(detect_run, formats="torchscript")


def test_spec_round_trip_keeps_detection_fields(tmp_path: Path):
    spec = detect_spec("csp_n", "eca", 64, {}, iou_threshold=0.5)
    rebuilt = ModelSpec(**json.loads(json.dumps(spec.__dict__)))
    assert rebuilt == spec and rebuilt.build().num_classes == 3


def test_detection_export_compares_real_boxes_and_records_its_thresholds(detect_run, tmp_path, monkeypatch):
    """Issue 23, finding 7: a 1-epoch detector may find nothing at 0.25; the check then still compares boxes (NMS at
    VERIFY_CONF on both decoded outputs), refuses when there are none at all, and --conf/--iou go into model.json."""
    import visattn.export as export_module

    report = export_run(detect_run, formats="onnx", conf_threshold=0.05, iou_threshold=0.5)
    checks = report["formats"]["onnx"]["checks"]
    assert all(c["detections_low_conf"] > 0 and c["box_agreement_low_conf"] >= 0.95 for c in checks)
    spec = json.loads((detect_run / "export" / "model.json").read_text())
    assert spec["conf_threshold"] == 0.05 and spec["iou_threshold"] == 0.5
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (64, 64), (120, 120, 120)).save(images / "grey.png")
    predict_folder(detect_run / "export" / "model.onnx", images, conf_threshold=0.05)  # allowed: the export's
    with pytest.raises(ValueError, match="below the 0.05 this ONNX file was exported with"):
        predict_folder(detect_run / "export" / "model.onnx", images, conf_threshold=0.01)
    monkeypatch.setattr(export_module, "VERIFY_CONF", 0.99999)
    with pytest.raises(ExportError, match="0 detections compared"):
        export_run(detect_run, formats="torchscript", conf_threshold=0.99999)
    with pytest.raises(ValueError, match="--conf must be a number in"):
        export_run(detect_run, formats="torchscript", conf_threshold=1.5)
