"""Blocks that train stably wherever they sit: STN padding, theta monitoring, block-declared optimiser groups,
position only in MHSA's scores, CBAM's BatchNorm momentum, weight-decay exemptions, optimiser defaults, bf16."""

from __future__ import annotations

import csv

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import visattn
from visattn.config import make_config
from visattn.tasks.common import make_optimizer, warmup_cosine
from visattn.tasks.monitors import BlockStatsMonitor

BLOCKS = visattn.list_attention()


def randomise(module: nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * scale)


def group_of(optimizer: torch.optim.Optimizer, name: str) -> dict:
    groups = [g for g in optimizer.param_groups if name in g["param_names"]]
    assert len(groups) == 1, name
    return groups[0]


# ---- STN --------------------------------------------------------------------------------------------------------


def test_stn_zoom_out_does_not_paint_a_frame():
    """A normalised black background (-0.42 after ImageNet normalisation) stays black around a zoomed-out view."""
    block = visattn.build_attention("stn", 3).eval()
    with torch.no_grad():
        block.fc_theta.bias.copy_(torch.tensor([2.0, 0.0, 0.3, 0.0, 2.0, 0.0]))  # zoom out 2x, shift right
    x = torch.full((1, 3, 16, 16), -0.42)
    x[..., 6:10, 6:10] = 2.0  # a bright digit in the middle
    out = block(x)
    frame = torch.ones(16, 16, dtype=torch.bool)
    frame[3:13, 2:12] = False  # around the shrunken content
    torch.testing.assert_close(out[..., frame], torch.full_like(out[..., frame], -0.42))
    zeros = visattn.build_attention("stn", 3, padding_mode="zeros").eval()
    zeros.load_state_dict(block.state_dict())
    assert zeros(x)[..., frame].max() > -0.1  # the paper's zero padding: a mean-grey frame


class Wrapped(L.LightningModule):
    """A block in front of a linear classifier; lr 0 keeps the block's parameters where the test put them."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.model = nn.Sequential(block, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))

    def training_step(self, batch, batch_idx):  # noqa: ANN001
        images, labels = batch
        return F.cross_entropy(self.model(images), labels)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def fit_one_epoch(block: nn.Module, tmp_path) -> BlockStatsMonitor:  # noqa: ANN001
    monitor = BlockStatsMonitor()
    data = TensorDataset(torch.randn(8, 3, 12, 12), torch.randint(0, 2, (8,)))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=L.pytorch.loggers.CSVLogger(tmp_path, name="logs"),
                        callbacks=[monitor], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1)
    trainer.fit(Wrapped(block), DataLoader(data, batch_size=4))
    return monitor


def logged(tmp_path) -> dict[str, float]:  # noqa: ANN001
    (path,) = tmp_path.glob("logs/*/metrics.csv")
    rows = list(csv.DictReader(path.open()))
    return {k: float(v) for row in rows for k, v in row.items() if v and k.startswith("blocks/")}


def test_stn_pushed_off_the_image_is_reported(tmp_path, capsys):
    block = visattn.build_attention("stn", 3)
    with torch.no_grad():
        block.fc_theta.bias.copy_(torch.tensor([1.0, 0.0, 2.5, 0.0, 1.0, 0.0]))  # shifted 1.25 widths: off the image
    monitor = fit_one_epoch(block, tmp_path)
    err = capsys.readouterr().err
    assert "warning" in err and "degenerate sampling grid" in err and "outside the input" in err
    assert monitor.warnings and monitor.warnings[0][:2] == (1, "0")
    stats = logged(tmp_path)
    assert stats["blocks/0/outside"] == 1.0 and stats["blocks/0/translation"] == pytest.approx(2.5)
    assert stats["blocks/0/scale"] == pytest.approx(1.0) and stats["blocks/0/shear"] == pytest.approx(0.0)


def test_stn_collapsed_scale_is_reported_and_a_healthy_one_is_not(tmp_path, capsys):
    block = visattn.build_attention("stn", 3)
    fit_one_epoch(block, tmp_path / "identity")
    assert "degenerate" not in capsys.readouterr().err
    assert logged(tmp_path / "identity")["blocks/0/outside"] == 0.0
    with torch.no_grad():
        block.fc_theta.bias.copy_(torch.tensor([0.01, 0.0, 0.0, 0.0, 0.01, 0.0]))  # the whole output from one pixel
    monitor = fit_one_epoch(block, tmp_path / "collapsed")
    assert "scale collapsed" in capsys.readouterr().err and len(monitor.warnings) == 1


def test_stn_stats_only_in_training_and_reset_per_epoch():
    block = visattn.build_attention("stn", 3)
    block.eval()(torch.randn(2, 3, 8, 8))
    assert block.epoch_stats() == {}
    block.train()(torch.randn(2, 3, 8, 8))
    assert block.epoch_stats()["scale"] == pytest.approx(1.0)
    assert block.epoch_stats() == {}
    assert "_stat_sums" not in block.state_dict()  # checkpoints and exports do not see the statistics


# ---- optimiser groups declared by blocks --------------------------------------------------------------------------


def stn_model(**args) -> nn.Module:  # noqa: ANN003
    return visattn.build_model("resnet18", num_classes=10, backbone_args={"base_width": 8},
                               attn={"block": "stn", "at": "input", "args": args})


def test_stn_localisation_net_learns_ten_times_slower():
    optimizer = make_optimizer(stn_model(), name="adamw", lr=1e-3, weight_decay=0.05, momentum=0.9)
    loc = group_of(optimizer, "input.block.localization.0.weight")
    assert loc["lr"] == pytest.approx(1e-4) and loc["lr_scale"] == 0.1 and loc["weight_decay"] == 0.05
    assert group_of(optimizer, "input.block.fc_theta.bias")["lr"] == pytest.approx(1e-4)
    assert group_of(optimizer, "input.block.fc_theta.bias")["weight_decay"] == 0.0
    assert group_of(optimizer, "conv1.weight")["lr"] == pytest.approx(1e-3)
    # the schedule scales each group's own lr, so the ratio holds through warm-up and decay
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(10, 2))
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    assert loc["lr"] / group_of(optimizer, "conv1.weight")["lr"] == pytest.approx(0.1)


def test_lr_scale_is_set_from_the_attn_args():
    config = make_config({}, {"attn": {"block": "stn", "at": "input", "args": {"loc_lr_scale": 1.0}}})
    model = stn_model(**config.attn["args"])
    optimizer = make_optimizer(model, name="sgd", lr=0.05, weight_decay=5e-4, momentum=0.9)
    assert {g["lr_scale"] for g in optimizer.param_groups} == {1.0}
    with pytest.raises(ValueError, match="loc_lr_scale"):
        stn_model(loc_lr_scale=-1)


def test_no_weight_decay_parameters_land_in_the_zero_decay_group():
    vit = visattn.build_model("vit_tiny", num_classes=10, img_size=32)
    optimizer = make_optimizer(vit, name="adamw", lr=1e-3, weight_decay=0.05, momentum=0.9)
    assert group_of(optimizer, "pos_embed")["weight_decay"] == 0.0
    assert group_of(optimizer, "cls_token")["weight_decay"] == 0.0
    assert group_of(optimizer, "blocks.0.attn.qkv.weight")["weight_decay"] == 0.05

    swin = visattn.build_model("swin_t", num_classes=10, img_size=64,
                               backbone_args={"embed_dim": 24, "depths": (1, 1, 1, 1)})
    optimizer = make_optimizer(swin, name="adamw", lr=1e-3, weight_decay=0.05, momentum=0.9)
    tables = [n for n, _ in swin.named_parameters() if n.endswith("relative_position_bias_table")]
    assert tables and all(group_of(optimizer, n)["weight_decay"] == 0.0 for n in tables)

    mhsa = visattn.build_model("resnet18", num_classes=10, backbone_args={"base_width": 16},
                               attn={"block": "mhsa", "at": "layer4.*", "args": {"pos_encoding": "learned"}})
    optimizer = make_optimizer(mhsa, name="sgd", lr=0.05, weight_decay=5e-4, momentum=0.9)
    tables = [n for n, _ in mhsa.named_parameters() if n.endswith("pos_embed")]
    assert len(tables) == 3 and all(group_of(optimizer, n)["weight_decay"] == 0.0 for n in tables)
    assert group_of(optimizer, "layer4.0.slot.block.qkv.weight")["weight_decay"] == 5e-4


# ---- MHSA ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos", ["sinusoidal", "learned"])
@pytest.mark.parametrize("norm", [True, False])
def test_mhsa_position_does_not_reach_the_values(pos, norm):
    """In a ResNet slot the input is exactly 0 at init: the output must not carry a positional pattern."""
    block = visattn.build_attention("mhsa", 32, pos_encoding=pos, norm=norm).eval()
    randomise(block, scale=0.5)  # proj is no longer zero: whatever the values carry reaches the output
    out = block(torch.zeros(2, 32, 5, 7))
    assert out.abs().sum() > 0  # the value bias does reach it ...
    torch.testing.assert_close(out, out[:, :, :1, :1].expand_as(out))  # ... the same at every position


def test_mhsa_position_still_shapes_the_attention():
    block = visattn.build_attention("mhsa", 32).eval()
    randomise(block, scale=0.5)
    from visattn.viz.capture import capture

    with capture(block) as maps:
        block(torch.zeros(1, 32, 4, 4))
    attn = next(iter(maps.values()))["attn"]  # (1, heads, N, N)
    assert not torch.allclose(attn, torch.full_like(attn, 1 / 16), atol=1e-3)  # not uniform: positions differ


# ---- CBAM ---------------------------------------------------------------------------------------------------------


def test_cbam_eval_maps_match_train_maps_after_a_short_fit():
    """After 60 steps the running statistics must describe the batches (momentum 0.01 still remembered init)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), visattn.build_attention("cbam", 16),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].weight.mul_(0.05)  # a slot input of small scale, as after a zero-initialised BatchNorm
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    images, labels = torch.randn(64, 3, 12, 12), torch.randint(0, 4, (64,))
    for step in range(60):
        batch = slice(step % 4 * 16, step % 4 * 16 + 16)
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    gate = model[1].spatial_gate
    with torch.no_grad():
        feats = model[1].channel_gate(model[0](images[:16]))
        train_maps = gate.train().spatial_map(feats)
        eval_maps = gate.eval().spatial_map(feats)
    train_span = float(train_maps.max() - train_maps.min())
    eval_span = float(eval_maps.max() - eval_maps.min())
    assert train_span > 0.5
    assert eval_span == pytest.approx(train_span, rel=0.2), (eval_span, train_span)


# ---- optimiser defaults -------------------------------------------------------------------------------------------


def test_each_optimiser_gets_its_own_default_and_says_so(capsys):
    sgd = make_config({}, {"optimizer": "sgd"})
    assert (sgd.lr, sgd.weight_decay) == (0.05, 5e-4)
    assert "sgd (classify) default lr 0.05, weight_decay 0.0005" in capsys.readouterr().err
    adamw = make_config({}, {})
    assert (adamw.lr, adamw.weight_decay) == (2e-3, 0.05) and adamw.to_dict()["lr"] == 2e-3  # in config.yaml
    detect = make_config({}, {"task": "detect", "optimizer": "sgd"})
    assert detect.lr == 0.01
    given = make_config({}, {"optimizer": "sgd", "lr": 0.2})
    assert (given.lr, given.weight_decay) == (0.2, 5e-4)
    assert "default weight_decay 0.0005" in capsys.readouterr().err.splitlines()[-1]


# ---- mixed precision ----------------------------------------------------------------------------------------------

# Under CPU bf16 autocast, the gates, SE/ECA/CBAM, and all of STN run in float32: they match fp32 to float
# rounding. MHSA's projections and SDPA stay in bf16 (the cost is there; the fused kernel's softmax is float32):
# a bf16 matmul has ~3 significant digits.
BF16_TOLERANCE = {"mhsa": 3e-2}


@pytest.mark.parametrize("name", BLOCKS)
def test_block_under_bf16_autocast_matches_fp32(name):
    torch.manual_seed(0)
    block = visattn.build_attention(name, 16)
    randomise(block, scale=0.3)
    block.eval()
    x = torch.randn(2, 16, 6, 6)
    expected = block(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
        out_bf16 = block(x.bfloat16())
    assert out.dtype == torch.float32 and out_bf16.dtype == torch.bfloat16  # cast back to the input's dtype
    tol = BF16_TOLERANCE.get(name, 1e-5)
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    # a bf16 input (as from a conv under autocast): same values in fp32, up to the output's rounding to bf16
    torch.testing.assert_close(out_bf16.float(), block(x.bfloat16().float()), rtol=8e-3 + tol, atol=8e-3 + tol)
