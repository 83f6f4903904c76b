"""Attention figures a person can trust (issue 23, finding 1): one colour scale per layer with its colour bar,
constant maps grey and labelled, STN density relative to uniform, a --slot glob that matches nothing refused,
strip labels inside the figure. Checked on the matplotlib figure objects, from hand-made maps (no training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import visattn
from visattn.viz.figures import Analysis, image_figure, index_figure, write_figures
from visattn.viz.measure import box_masks, box_mass_report, mass_in_boxes

N, SIZE = 3, 16


def analysis(**overrides) -> Analysis:
    """Maps as the issue found them: a varying layer, a layer spanning [0.0009, 0.0011], a constant one (with
    float noise), and an STN at the input that samples nearly uniformly."""
    gen = torch.Generator().manual_seed(0)
    varying = torch.rand(N, 4, 4, generator=gen) * torch.arange(1, N + 1)[:, None, None]  # image 3 peaks 3x higher
    narrow = 0.0009 + 0.0002 * torch.rand(N, SIZE, SIZE, generator=gen)
    constant = torch.full((N, SIZE, SIZE), 1 / SIZE**2) + 1e-9 * torch.rand(N, SIZE, SIZE, generator=gen)
    uniform = torch.full((N, SIZE, SIZE), 1 / SIZE**2)
    uniform[:, :, -3:] = 0.0  # the STN never reads the right edge
    uniform = uniform / uniform.sum((1, 2), keepdim=True)
    stages = {"layer1": varying, "layer3": narrow, "layer4": constant, "input": uniform}
    values = dict(maps={}, spatial=dict(stages), stages=stages,
                  channels={"backbone.stages.2.blocks.0.slot_with_a_long_name": torch.rand(N, 8, generator=gen)},
                  thetas={"input": torch.tensor([[0.8, 0.0, -0.2], [0.0, 1.0, 0.0]]).expand(N, 2, 3)},
                  gradcam=torch.ones(N, SIZE, SIZE) + 1e-7 * torch.rand(N, SIZE, SIZE, generator=gen),
                  logits=torch.zeros(N, 3))
    values.update(overrides)
    return Analysis(**values)


def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (N, SIZE, SIZE, 3), dtype=np.uint8)


def overlays(fig, name: str) -> list:
    """The colour-mapped images (not the grey photo under them) of the panels of layer ``name``."""
    return [im for ax in fig.axes if ax.get_gid() == f"overlay:{name}" for im in ax.images[1:]]


def colour_bars(fig, name: str) -> list:
    return [ax for ax in fig.axes if ax.get_gid() == f"colorbar:{name}"]


def titles(fig, name: str) -> list[str]:
    return [ax.get_title() for ax in fig.axes if ax.get_gid() == f"overlay:{name}"]


def test_each_layer_row_has_one_scale_from_zero_and_a_colour_bar():
    fig = index_figure(analysis(), images())
    for name in ("layer1", "layer3"):
        drawn = overlays(fig, name)
        assert len(drawn) == N
        limits = {im.get_clim() for im in drawn}
        assert len(limits) == 1, f"{name}: every image of a layer is drawn on one scale, got {limits}"
        low, high = limits.pop()
        assert low == 0.0  # non-negative maps start at 0: never stretched from their own minimum
        assert high == pytest.approx(max(float(m.max()) for m in analysis().stages[name]))
        bars = colour_bars(fig, name)
        assert len(bars) == 1
        assert f"[0, {high:.3g}]" in bars[0].get_ylabel()  # the bar says its range
    # the [0.0009, 0.0011] layer sits in the top fifth of its scale instead of spanning the colour range
    low, high = overlays(fig, "layer3")[0].get_clim()
    assert float(analysis().stages["layer3"].min()) / high > 0.8


def test_constant_maps_are_grey_and_labelled_never_stretched():
    fig = index_figure(analysis(), images())
    for name, value in (("layer4", 1 / SIZE**2), ("Grad-CAM", 1.0)):
        assert overlays(fig, name)[0].get_cmap().name == "gray"
        assert all(t.endswith(f"constant ({value:.3g})") for t in titles(fig, name)), titles(fig, name)
        assert not colour_bars(fig, name)  # nothing to read off a scale
    single = image_figure(analysis(), 0, images()[0])
    assert any(t.endswith(f"constant ({1 / SIZE**2:.3g})") for t in titles(single, "layer4"))


def test_stn_density_is_shown_relative_to_uniform_sampling():
    fig = index_figure(analysis(), images())
    (low, high), = {im.get_clim() for im in overlays(fig, "input")}
    assert low == 0.0 and high >= 2.0  # 1 = a plain resize, 0 = never read
    shown = overlays(fig, "input")[0].get_array()
    assert float(np.max(shown)) == pytest.approx(SIZE / (SIZE - 3), rel=0.05)  # the read pixels, denser than uniform
    assert float(np.min(shown)) < 0.2  # the right edge it never reads
    assert colour_bars(fig, "input")


def test_image_figure_shares_the_layer_scale_of_all_images():
    data = analysis()
    scales = data.scales(data.stages)
    first, third = (image_figure(data, i, images()[i], scales=scales) for i in (0, 2))
    assert overlays(first, "layer1")[0].get_clim() == overlays(third, "layer1")[0].get_clim()


def test_strip_labels_are_not_cut_off():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = image_figure(analysis(), 0, images()[0])
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    labels = [ax.yaxis.label for ax in fig.axes if ax.get_ylabel().endswith("ch)")]
    assert labels
    for label in labels:
        assert label.get_window_extent(renderer).x0 >= 0, label.get_text()


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return visattn.build_model("resnet18", num_classes=3, attn="cbam", img_size=SIZE,
                               backbone_args={"base_width": 4}).eval()


def test_slot_glob_matching_nothing_is_an_error_naming_the_slots(tmp_path):
    out = tmp_path / "figures"
    with pytest.raises(ValueError, match=r"'layer9\.\*' matches none.*layer1\.0\.slot"):
        write_figures(tiny_model(), images(), mean=(0.5,) * 3, std=(0.25,) * 3, out_dir=out, pattern="layer9.*")
    assert not list(out.glob("*.png"))
    with pytest.raises(ValueError, match="layer4.1.slot"):
        box_mass_report(tiny_model(), torch.randn(2, 3, SIZE, SIZE), np.array([[0, 0, 8, 8]] * 2), pattern="x*")


def test_rewriting_fewer_figures_leaves_no_stale_images(tmp_path):
    model = tiny_model()
    write_figures(model, images(), mean=(0.5,) * 3, std=(0.25,) * 3, out_dir=tmp_path, pattern="layer1.*")
    paths = write_figures(model, images()[:1], mean=(0.5,) * 3, std=(0.25,) * 3, out_dir=tmp_path,
                          pattern="layer1.*")
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(p.name for p in paths) == ["image_00.png",
                                                                                                 "index.png"]


def test_detection_boxes_measure_the_union_of_an_images_objects():
    boxes = [np.array([[0, 0, 4, 4], [8, 8, 12, 12]], np.float32), np.zeros((0, 4), np.float32)]
    masks = box_masks(boxes, (SIZE, SIZE))
    assert masks.shape == (2, SIZE, SIZE) and int(masks[0].sum()) == 32 and int(masks[1].sum()) == 0
    uniform = {"flat": torch.ones(2, 4, 4)}
    assert mass_in_boxes(uniform, boxes, img_size=SIZE)["flat"].tolist() == pytest.approx([32 / 256, 0.0])
