"""Detection: CSP backbone, PAN neck on every backbone family, head geometry, TAL assigner, loss, NMS, module."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

import visattn
from visattn.heads import box_distances, decode_boxes, encode_boxes, make_anchors
from visattn.losses import DetectionLoss, TaskAlignedAssigner, pad_targets
from visattn.models.detector import build_detector, postprocess
from visattn.models.weights import read_state_dict
from visattn.tasks.detect import DetectionModule

TINY_BACKBONES = {  # backbone -> (args, stride-8/16/32 input channels the neck must pick up)
    "resnet18": ({"base_width": 8}, (16, 32, 64)),
    "csp_n": ({}, (64, 128, 256)),
    "swin_t": ({"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2), "window_size": 4},
               (32, 64, 128)),
    "vit_tiny": ({"depth": 1, "embed_dim": 32, "num_heads": 2}, (16, 32, 32)),  # simple pyramid from stride 16
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny convs run fastest on one thread


def toy_batch() -> tuple[torch.Tensor, list[dict]]:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"boxes": torch.tensor([[8.0, 8.0, 40.0, 40.0], [30.0, 20.0, 60.0, 50.0]]), "labels": torch.tensor([0, 2]),
         "image_id": 0},
        {"boxes": torch.tensor([[16.0, 4.0, 48.0, 28.0]]), "labels": torch.tensor([1]), "image_id": 1},
    ]
    return images, targets


def test_overfit_tiny_batch():
    images, targets = toy_batch()
    model = build_detector("csp_n", num_classes=3, img_size=64)
    loss_fn = DetectionLoss(num_classes=3, strides=model.strides, reg_max=model.head.reg_max)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(30):
        losses = loss_fn(model(images), targets)
        assert set(losses) == {"cls", "box", "dfl", "total"}
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        history.append(losses["total"].item())
    print(f"overfit: total loss {history[0]:.3f} -> {history[-1]:.3f}")
    assert history[-1] < 0.3 * history[0]
    model.eval()
    for module in model.modules():  # 30 steps do not settle BatchNorm's running statistics; use batch statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.train()
    with torch.no_grad():
        found = postprocess(model(images), conf_threshold=0.1)
    for result, target in zip(found, targets, strict=True):
        assert set(result["labels"].tolist()) >= set(target["labels"].tolist())


def test_images_without_boxes_train():
    images, targets = toy_batch()
    model = build_detector("csp_n", num_classes=3, img_size=64)
    loss_fn = DetectionLoss(num_classes=3, strides=model.strides)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": 2}
    for batch_targets in ([targets[0], empty], [empty, empty]):
        losses = loss_fn(model(images), batch_targets)
        assert all(torch.isfinite(v) for v in losses.values())
        losses["total"].backward()
    assert losses["box"].item() == 0.0 and losses["dfl"].item() == 0.0 and losses["cls"].item() > 0


def test_anchors_and_box_coding():
    anchors, strides = make_anchors([(2, 3), (1, 1)], [8, 16])
    assert anchors.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12], [8, 8]]  # row-major, x first
    assert strides.squeeze(1).tolist() == [8] * 6 + [16]
    torch.manual_seed(0)
    boxes = torch.cat([anchors - torch.rand(7, 2) * 30, anchors + torch.rand(7, 2) * 30], dim=1)  # around anchors
    assert torch.allclose(decode_boxes(encode_boxes(boxes, anchors, strides), anchors, strides), boxes, atol=1e-5)
    logits = torch.full((1, 1, 4 * 16), -50.0)
    logits[0, 0, [3, 16 + 0, 32 + 15, 48 + 7]] = 50.0  # one bin per side: 3, 0, 15, 7
    assert torch.allclose(box_distances(logits, 16), torch.tensor([[[3.0, 0.0, 15.0, 7.0]]]), atol=1e-4)


def assign(gt_boxes, gt_labels, pred_boxes, *, topk=10, num_classes=2):
    anchors, _ = make_anchors([(4, 4)], [8])  # a 32x32 image, one stride-8 level: 16 anchors
    boxes, labels, mask = pad_targets([{"boxes": torch.tensor(gt_boxes), "labels": torch.tensor(gt_labels)}],
                                      device=torch.device("cpu"))
    scores = torch.full((1, 16, num_classes), 0.5)
    return TaskAlignedAssigner(topk=topk)(scores, pred_boxes[None], anchors, boxes, labels, mask), anchors


def test_assigner_box_on_one_cell():
    cell = [8.0, 8.0, 16.0, 16.0]  # exactly grid cell (row 1, col 1): only anchor 1*4+1 lies inside
    result, anchors = assign([cell], [1], torch.tensor([cell] * 16))
    assert result.fg_mask[0].nonzero().flatten().tolist() == [5]
    assert result.target_boxes[0, 5].tolist() == cell and result.target_labels[0, 5].item() == 1
    assert result.target_scores[0, 5].tolist() == pytest.approx([0.0, 1.0])  # best anchor gets its IoU, 1.0
    assert result.target_scores[0].sum().item() == pytest.approx(1.0)
    strides = torch.full((16, 1), 8.0)
    assert encode_boxes(result.target_boxes[0, 5:6], anchors[5:6], strides[5:6]).tolist() == [[0.5] * 4]


def test_assigner_topk_and_conflicts():
    small, large = [8.0, 8.0, 24.0, 24.0], [0.0, 0.0, 32.0, 32.0]
    inner = [5, 6, 9, 10]  # anchor centres at 12 and 20 lie inside the small box (and the large one)
    pred = torch.tensor([large] * 16)
    pred[inner] = torch.tensor(small)
    result, _ = assign([small, large], [0, 1], pred, topk=16)
    assert result.fg_mask.all()
    owner = result.gt_index[0]
    assert owner[inner].tolist() == [0] * 4  # claimed by both: the small box, which their predictions fit better
    assert sorted(set(range(16)) - set(inner)) == (owner == 1).nonzero().flatten().tolist()
    assert torch.equal(result.target_labels[0], owner)
    only_small, _ = assign([small], [0], pred, topk=2)  # top-k per gt: 2 of its 4 inside anchors
    assert only_small.fg_mask.sum().item() == 2 and set(only_small.fg_mask[0].nonzero().flatten().tolist()) < set(inner)


def test_nms_keeps_the_right_boxes():
    decoded = torch.tensor([[
        [0.0, 0.0, 10.0, 10.0, 0.9, 0.0],
        [1.0, 1.0, 10.0, 10.0, 0.8, 0.0],  # IoU 0.81 with the first, same class: suppressed
        [1.0, 1.0, 10.0, 10.0, 0.0, 0.7],  # same box, another class: kept
        [20.0, 20.0, 30.0, 30.0, 0.1, 0.0],  # below the threshold
    ]])
    (result,) = postprocess(decoded, conf_threshold=0.25, iou_threshold=0.6)
    assert result["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]]
    assert result["labels"].tolist() == [0, 1] and result["scores"].tolist() == pytest.approx([0.9, 0.7])
    (multi,) = postprocess(decoded, conf_threshold=0.001, iou_threshold=0.6, multi_label=True, max_det=2)
    assert multi["scores"].tolist() == pytest.approx([0.9, 0.7])
    with pytest.raises(ValueError, match="iou_threshold"):
        postprocess(decoded, iou_threshold=0.0)


@pytest.mark.parametrize("backbone", sorted(TINY_BACKBONES))
def test_neck_channels_and_strides(backbone):
    args, in_channels = TINY_BACKBONES[backbone]
    model = build_detector(backbone, num_classes=2, img_size=64, backbone_args=args)
    assert model.neck.inputs.out_channels == in_channels
    assert model.neck.out_channels == (64, 128, 256) and model.strides == (8, 16, 32)
    assert model.frozen_unused == (["norm.weight", "norm.bias"] if backbone == "swin_t" else [])
    features = model.neck(model.backbone.forward_stages(torch.randn(2, 3, 64, 64)))
    expected = [(2, c, 64 // s, 64 // s) for c, s in zip((64, 128, 256), (8, 16, 32), strict=True)]
    assert [tuple(f.shape) for f in features] == expected
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 64 + 16 + 4, 4 + 2)
    with pytest.raises(ValueError, match="multiples of the largest stride 32"):
        model(torch.randn(1, 3, 48, 48))


def test_default_attention_goes_to_neck_outputs():
    model = build_detector("csp_n", attn="se", num_classes=2, img_size=64)
    filled = [s.name for s in visattn.list_slots(model) if s.block]
    assert filled == ["neck.out_slots.0", "neck.out_slots.1", "neck.out_slots.2"]
    roles = {s.name: s.role for s in visattn.list_slots(model)}
    assert roles["backbone.input"] == "input" and roles["neck.top_down3.slot"] == "csp"
    assert roles["backbone.stages.0.c2f.slot"] == "block" and roles["backbone.stages.0.slot"] == "stage"
    with pytest.raises(ValueError, match="scale"):
        build_detector("csp_n", num_classes=2, scale="xl")


@pytest.mark.parametrize("block", visattn.list_attention())
def test_every_block_fits_every_neck_slot(block):
    model = build_detector("csp_n", attn={"block": block, "at": "neck.*"}, num_classes=2, img_size=64)
    filled = sum(1 for s in visattn.list_slots(model) if s.block)
    assert filled == (0 if block == "none" else 7)  # 3 outputs + 4 C2f; "none" leaves slots empty
    raw = model(torch.randn(2, 3, 64, 64))
    assert [tuple(r.shape) for r in raw] == [(2, 64 + 2, 8, 8), (2, 66, 4, 4), (2, 66, 2, 2)]
    model.eval()
    assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


def test_csp_n_detector_matches_yolov8n_size():
    result = visattn.count(build_detector("csp_n", num_classes=80), input_size=(1, 3, 160, 160))
    print(f"csp_n detector: {result.params / 1e6:.3f}M params, {result.macs / 1e9:.3f} GMACs at 160")
    assert 3.0e6 <= result.params <= 3.3e6  # YOLOv8n: 3.16M
    assert 0.24e9 <= result.macs <= 0.30e9  # YOLOv8n: 8.7 GFLOPs at 640 -> ~0.27 GMACs at 160
    assert not result.uncounted_ops


def test_csp_backbone_classifies():
    model = visattn.build_model("csp_n", attn="se", num_classes=10)
    assert [(s.name, s.channels, s.stride) for s in model.stage_info] == [
        ("stages.0", 32, 4), ("stages.1", 64, 8), ("stages.2", 128, 16), ("stages.3", 256, 32)]
    assert [s.name for s in visattn.list_slots(model) if s.block] == [f"stages.{i}.c2f.slot" for i in range(4)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_pretrained_classification_and_detection_files(tmp_path):
    classifier = visattn.build_model("csp_n", num_classes=10)
    torch.save(classifier.state_dict(), tmp_path / "cls.pth")
    model = build_detector("csp_n", attn="eca", num_classes=3, img_size=64, pretrained=tmp_path / "cls.pth")
    backbone = model.backbone.state_dict()
    assert all(torch.equal(v, backbone[k]) for k, v in classifier.state_dict().items() if not k.startswith("head."))
    torch.save(model.state_dict(), tmp_path / "det.pth")  # fine-tune a detector on a data set with 5 classes
    tuned = build_detector("csp_n", attn="eca", num_classes=5, img_size=64, pretrained=tmp_path / "det.pth")
    assert tuned.pretrained_report.classifier_reinitialised == [
        f"head.cls_branches.{i}.2.{p}" for i in range(3) for p in ("weight", "bias")]
    assert torch.equal(tuned.neck.out_slots[0].block.conv.weight, model.neck.out_slots[0].block.conv.weight)


def collate(samples):
    return torch.stack([image for image, _ in samples]), [target for _, target in samples]


def test_detection_module_fits_logs_map_and_checkpoints_ema(tmp_path):
    images, targets = toy_batch()
    samples = list(zip(images, targets, strict=True))
    loader = DataLoader(samples, batch_size=2, collate_fn=collate)
    model = build_detector("csp_n", num_classes=3, img_size=64)
    module = DetectionModule(model, num_classes=3, img_size=64, lr=2e-3, weight_decay=0.05, optimizer="adamw",
                             momentum=0.9, warmup_epochs=0.0)
    trainer = L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=loader)
    metrics = trainer.callback_metrics
    for name in ("train/loss", "train/loss_cls", "train/loss_box", "train/loss_dfl", "val/loss", "val/map",
                 "val/map50", "val/map75"):
        assert name in metrics and math.isfinite(float(metrics[name])), name
    assert module.complexity["params"] > 0 and module.complexity["macs"] > 0 and module.ema.updates == 3

    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    saved = read_state_dict(path)  # what export / pretrained read: the averaged weights
    averaged = module.ema.module.state_dict()
    assert all(torch.equal(saved[k], averaged[k]) for k in averaged)
    fresh = DetectionModule(build_detector("csp_n", num_classes=3, img_size=64), num_classes=3, img_size=64)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    (test,) = trainer.test(fresh, dataloaders=loader, ckpt_path=str(path), verbose=False,
                           weights_only=True)
    assert {"test/map", "test/map50", "test/map75", "test/loss"} <= set(test)
    trained = module.model.state_dict()
    assert all(torch.equal(fresh.model.state_dict()[k], trained[k]) for k in trained)  # resume trains on
    assert all(torch.equal(fresh.ema.module.state_dict()[k], averaged[k]) for k in averaged)
    assert fresh.ema.updates == 3
