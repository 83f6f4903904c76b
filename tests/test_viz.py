"""Attention capture for every block in every family, derived maps, mass in boxes, figures, the callback, the tool."""

from __future__ import annotations

import runpy
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import visattn
from visattn.backbones.swin import window_partition
from visattn.viz import capture
from visattn.viz.derive import attention_rollout, windows_to_image
from visattn.viz.gradcam import grad_cam
from visattn.viz.measure import box_area_fraction, mass_in_boxes, model_stages, spatial_maps, stage_of

FAMILIES = {  # as tests/test_build.py TINY_FAMILIES, plus a narrow ResNet
    "resnet18": {"img_size": 32, "backbone_args": {"base_width": 8}},
    "vit_tiny": {"img_size": 32, "backbone_args": {"patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}},
    "swin_t": {"img_size": 32, "backbone_args": {"patch_size": 2, "window_size": 4, "embed_dim": 16,
                                                 "depths": (2, 2), "num_heads": (1, 2)}},
}
BLOCK_KEYS = {"se": {"channel"}, "eca": {"channel"}, "channel_gate": {"channel"}, "spatial_gate": {"spatial"},
              "cbam": {"channel", "spatial"}, "stn": {"theta", "grid", "samples"}, "mhsa": {"attn", "mass"}}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny convs run fastest on one thread


def tiny(family: str, attn, size: int = 32) -> torch.nn.Module:
    spec = FAMILIES[family]
    torch.manual_seed(0)
    return visattn.build_model(family, num_classes=3, attn=attn, img_size=size,
                               backbone_args=spec["backbone_args"]).eval()


def randomise(model: torch.nn.Module) -> None:
    """Zero-initialised layers (STN's theta, MHSA's proj, ResNet's last BN) would make blocks identities."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.05)


def stage_sizes(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    with torch.no_grad():
        outs = model.forward_stages(x)
    return {info.name: tuple(o.shape[-2:]) for info, o in zip(model.stage_info, outs, strict=True)}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("block", visattn.list_attention())
def test_capture_shapes_every_block_and_outputs_bit_identical(family, block):
    model = tiny(family, [{"block": block}, {"block": "stn", "at": "input"}] if block != "stn" else block)
    randomise(model)
    x = torch.randn(2, 3, 32, 32)
    sizes = stage_sizes(model, x)
    stages = model_stages(model)
    with torch.no_grad():
        before = model(x)
        with capture(model) as maps:
            during = model(x)
        after = model(x)
    assert torch.equal(before, during) and torch.equal(before, after)
    filled = {s.name: s for s in visattn.list_slots(model) if s.block}
    assert filled or block == "none"
    for name, slot in filled.items():
        entry = maps[name]
        h, w = (32, 32) if name == "input" else sizes[stage_of(name, stages)]
        assert entry["input_size"] == (h, w)
        assert BLOCK_KEYS[slot.block] <= set(entry)
        if "channel" in entry:
            assert entry["channel"].shape == (2, slot.channels)
        if "spatial" in entry:
            assert entry["spatial"].shape == (2, h, w) and ((entry["spatial"] >= 0) & (entry["spatial"] <= 1)).all()
        if slot.block == "stn":
            assert entry["theta"].shape == (2, 2, 3) and entry["grid"].shape == (2, h, w, 2)
            assert entry["samples"].shape == (2, h, w)
        if slot.block == "mhsa":
            heads = model.get_submodule(name).block.heads
            assert entry["attn"].shape == (2, heads, h * w, h * w)
            torch.testing.assert_close(entry["mass"].sum((1, 2)), torch.ones(2))
    if family == "vit_tiny":
        gh, gw = sizes["blocks"]
        for i in range(2):
            assert maps[f"blocks.{i}.attn"]["attn"].shape == (2, 2, 1 + gh * gw, 1 + gh * gw)
            assert maps[f"blocks.{i}.attn"]["cls"].shape == (2, gh, gw)
        assert maps["rollout"]["rollout"].shape == (2, gh, gw)
    if family == "swin_t":
        for stage, heads in [("stages.0", 1), ("stages.1", 2)]:
            for j in range(2):
                entry = maps[f"{stage}.blocks.{j}.attn"]
                assert entry["mass"].shape == (2, *sizes[stage]) and entry["attn"].shape[1:] == (heads, 16, 16)
    assert all(m.__dict__.get("_capture") is None for m in model.modules())  # instance attributes removed
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # no hooks left


def test_capture_does_not_nest_and_records_nothing_when_off():
    model = tiny("resnet18", "se")
    gate = model.layer1[0].slot.block
    assert type(gate)._capture is None and "_capture" not in gate.__dict__
    with capture(model):
        with pytest.raises(ValueError, match="cannot nest"):
            with capture(model):
                pass
    assert "_capture" not in gate.__dict__


def test_attention_probs_are_what_sdpa_uses():
    from visattn.viz.capture import attention_probs

    q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)
    mask = torch.randn(2, 4, 10, 10)
    torch.testing.assert_close(attention_probs(q, k, mask) @ v, F.scaled_dot_product_attention(q, k, v, mask))


def test_vit_rollout_rows_sum_to_one_on_a_non_square_grid():
    model = tiny("vit_tiny", None)
    randomise(model)
    with torch.no_grad(), capture(model) as maps:
        model(torch.randn(2, 3, 32, 48))
    entry = maps["rollout"]
    assert entry["grid_size"] == (4, 6) and entry["rollout"].shape == (2, 4, 6)
    assert entry["matrix"].shape == (2, 25, 25)
    torch.testing.assert_close(entry["matrix"].sum(-1), torch.ones(2, 25))
    torch.testing.assert_close(entry["rollout"].sum((1, 2)), torch.ones(2))
    # one layer without the residual term is that layer's head-averaged attention
    attn = maps["blocks.0.attn"]["attn"]
    torch.testing.assert_close(attention_rollout([attn], residual=0.0), attn.mean(1))


@pytest.mark.parametrize(("size", "window", "shift"), [((16, 16), (4, 4), (2, 2)), ((10, 14), (4, 4), (2, 2)),
                                                       ((8, 8), (4, 4), (0, 0))])
def test_windows_to_image_undoes_pad_roll_and_partition(size, window, shift):
    image = torch.randn(2, *size)
    pad_h, pad_w = (-size[0]) % window[0], (-size[1]) % window[1]
    x = F.pad(image, (0, pad_w, 0, pad_h))  # (B, Hp, Wp)
    x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    windows = window_partition(x[..., None], window)[..., 0]  # (B*nW, N)
    torch.testing.assert_close(windows_to_image(windows, window, shift, size), image)


def test_swin_window_maps_tile_the_full_grid():
    model = tiny("swin_t", None)
    randomise(model)
    with torch.no_grad(), capture(model) as maps:
        model(torch.randn(2, 3, 32, 32))
    entry = maps["stages.0.blocks.1.attn"]  # the shifted block of the 16x16 stage
    window, shift, size = entry["layout"]
    assert size == (16, 16) and shift == (2, 2)
    torch.testing.assert_close(entry["attn"].sum(-1), torch.ones(entry["attn"].shape[:-1]))  # rows sum to 1
    mass = entry["mass"]
    assert mass.shape == (2, 16, 16)
    rolled = torch.roll(mass, shifts=(-2, -2), dims=(1, 2))[..., None]  # back to the windows' frame
    per_window = window_partition(rolled, window).sum((1, 2))  # (B*nW,)
    torch.testing.assert_close(per_window, torch.ones(2 * 16))  # every window present once, each summing to 1
    with torch.no_grad(), capture(model) as padded:
        model(torch.randn(1, 3, 36, 36))  # 18x18 tokens: padded to 20x20 inside
    assert padded["stages.0.blocks.1.attn"]["mass"].shape == (1, 18, 18)


def test_mass_in_boxes_against_known_maps():
    boxes = np.array([[8, 8, 24, 24], [0, 0, 32, 16]], np.float32)
    inside = torch.zeros(2, 32, 32)
    inside[0, 8:24, 8:24] = 1.0
    inside[1, :16] = 3.0
    coarse = torch.zeros(2, 8, 8)  # stride 4: the same boxes in cells
    coarse[0, 2:6, 2:6] = 1.0
    coarse[1, :4] = 1.0
    uniform = torch.ones(2, 4, 4)
    result = mass_in_boxes({"inside": inside, "coarse": coarse, "uniform": uniform}, boxes, img_size=32)
    torch.testing.assert_close(result["inside"], torch.ones(2))
    torch.testing.assert_close(result["coarse"], torch.ones(2))
    torch.testing.assert_close(result["uniform"], box_area_fraction(boxes, img_size=32))
    torch.testing.assert_close(box_area_fraction(boxes, img_size=32), torch.tensor([0.25, 0.5]))
    with pytest.raises(ValueError, match="boxes"):
        mass_in_boxes({"inside": inside}, boxes[:1], img_size=32)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_grad_cam_any_family(family):
    model = tiny(family, None)
    randomise(model)
    params = [p.grad for p in model.parameters()]
    cam, logits = grad_cam(model, torch.randn(2, 3, 32, 32))
    assert cam.shape == (2, 32, 32) and logits.shape == (2, 3)
    assert cam.min() >= 0 and cam.max() <= 1 and torch.isfinite(cam).all()
    assert params == [p.grad for p in model.parameters()]  # no .grad written


def test_figures_are_written(tmp_path):
    from visattn.viz.figures import write_figures

    model = tiny("vit_tiny", [{"block": "cbam"}, {"block": "stn", "at": "input"}])
    randomise(model)
    images = (np.random.default_rng(0).random((2, 32, 32, 3)) * 255).astype(np.uint8)
    paths = write_figures(model, images, mean=(0.5,) * 3, std=(0.25,) * 3, out_dir=tmp_path,
                          boxes=np.array([[4, 4, 20, 20], [8, 0, 30, 16]], np.float32), labels=np.array([0, 2]))
    assert [p.name for p in paths] == ["index.png", "image_00.png", "image_01.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="uint8"):
        write_figures(model, images.astype(np.float32), mean=(0.5,) * 3, std=(0.25,) * 3, out_dir=tmp_path)


@pytest.fixture(scope="module")
def cluttered_run(tmp_path_factory):
    from visattn.config import make_config
    from visattn.training import train

    out = tmp_path_factory.mktemp("runs")
    data_args = {"n_train": 64, "n_val": 16, "n_test": 16, "canvas_size": 32, "min_digit_size": 10,
                 "max_digit_size": 16}
    config = make_config({}, dict(data="cluttered-digits", data_args=data_args, img_size=32, epochs=2, batch_size=32,
                                  num_workers=0, out=str(out), name="run", backbone="resnet18",
                                  backbone_args={"base_width": 8}, attn="cbam", visualize_every=2))
    metrics = train(config)
    return out / "run", metrics


def test_callback_writes_figures_during_fit(cluttered_run):
    run_dir, _ = cluttered_run
    epochs = sorted(p.name for p in (run_dir / "figures").iterdir())
    assert epochs == ["epoch_001"]  # every 2 epochs, 0-based epoch of the second
    pngs = sorted((run_dir / "figures" / "epoch_001").glob("*.png"))
    assert [p.name for p in pngs][-1] == "index.png" and len(pngs) == 9  # 8 validation images + index
    assert all(p.stat().st_size > 10_000 for p in pngs)


def test_tool_draws_and_measures_a_run(cluttered_run, tmp_path, monkeypatch, capsys):
    run_dir, _ = cluttered_run
    tool = str(visattn.__path__[0] + "/../tools/visualize.py")
    argv = ["tools/visualize.py", "--run", str(run_dir), "--n", "2", "--slot", "layer4.*", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(tool, run_name="__main__")
    assert done.value.code == 0 and (tmp_path / "index.png").stat().st_size > 10_000
    assert "wrote 3 figures" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", ["tools/visualize.py", "--run", str(run_dir), "--measure", "8", "--untrained"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(tool, run_name="__main__")
    printed = capsys.readouterr().out
    assert done.value.code == 0
    rows = dict(line.split()[:2] for line in printed.splitlines()[1:])
    assert {"layer1.0.slot", "stage:layer1", "gradcam", "box_area"} <= set(rows)
    assert all(0.0 <= float(v) <= 1.0 for v in rows.values())
    # untrained: residual branches start at zero, so CBAM's spatial maps are flat and score the box's area
    assert float(rows["layer1.0.slot"]) == pytest.approx(float(rows["box_area"]), abs=1e-3)
    monkeypatch.setattr(sys, "argv", ["tools/visualize.py", "--run", str(run_dir), "--measure", "4", "--data",
                                      "digits"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(tool, run_name="__main__")
    assert done.value.code == 2 and "no object boxes" in capsys.readouterr().err


def test_spatial_maps_glob_selects_keys():
    model = tiny("resnet18", "cbam")
    with torch.no_grad(), capture(model) as maps:
        model(torch.randn(1, 3, 32, 32))
    assert sorted(spatial_maps(maps, pattern="layer2.*")) == ["layer2.0.slot", "layer2.1.slot"]
