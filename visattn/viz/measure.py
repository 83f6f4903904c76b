"""Spatial maps out of captured entries, per-stage averages, and how much of a map falls inside a box."""

from __future__ import annotations

import fnmatch
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visattn.errors import BadValueError
from visattn.viz.capture import capture
from visattn.viz.gradcam import eval_mode, grad_cam

SPATIAL_KINDS = ("spatial", "mass", "cls", "rollout", "samples")  # the (B, h, w) map of each kind of entry


def check_pattern(pattern: str | None, keys: Collection[str]) -> None:
    """Refuse a ``--slot`` glob that matches none of the captured keys, naming them."""
    if pattern is None or any(fnmatch.fnmatchcase(key, pattern) for key in keys):
        return
    listed = ", ".join(sorted(keys)) or "none (the model has no attention block filled in)"
    raise BadValueError(f"--slot {pattern!r} matches none of the model's captured attention maps, so nothing would be "
                     f"drawn or measured; its slots and attention layers are: {listed}")


def spatial_maps(maps: Mapping[str, Mapping[str, object]], *, pattern: str | None = None) -> dict[str, torch.Tensor]:
    """One (B, h, w) map per captured entry that has one (``pattern``: an fnmatch glob over the keys)."""
    out = {}
    for key, entry in maps.items():
        if pattern is not None and not fnmatch.fnmatchcase(key, pattern):
            continue
        for kind in SPATIAL_KINDS:
            if isinstance(entry.get(kind), torch.Tensor):
                out[key] = entry[kind]
                break
    return out


def channel_maps(maps: Mapping[str, Mapping[str, object]], *, pattern: str | None = None) -> dict[str, torch.Tensor]:
    """The (B, C) channel weights of every entry that has them."""
    return {key: entry["channel"] for key, entry in maps.items() if isinstance(entry.get("channel"), torch.Tensor)
            and (pattern is None or fnmatch.fnmatchcase(key, pattern))}


def model_stages(model: nn.Module) -> list[str]:
    """Module paths of the stages of every backbone inside ``model`` (from their ``stage_info``: where each stage's
    slots live)."""
    names = []
    for path, module in model.named_modules():
        for info in getattr(module, "stage_info", None) or []:
            where = info.slots or info.name
            names.append(f"{path}.{where}" if path else where)
    return names


def stage_of(key: str, stages: list[str]) -> str:
    """The stage a captured key belongs to (the longest stage path it lies under), else the key itself."""
    owners = [s for s in stages if key == s or key.startswith(s + ".")]
    return max(owners, key=len) if owners else key


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) -> (B, H, W): cells repeated when the size divides, bilinear otherwise."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps.float()
    exact = size[0] % maps.shape[-2] == 0 and size[1] % maps.shape[-1] == 0
    mode = "nearest" if exact else "bilinear"
    extra = {} if exact else {"align_corners": False}
    return F.interpolate(maps[:, None].float(), size=size, mode=mode, **extra)[:, 0]  # (B, H, W)


def normalise_mass(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) non-negative maps scaled to sum 1 per image."""
    maps = maps.clamp_min(0)
    return maps / maps.flatten(1).sum(1).clamp_min(1e-12)[:, None, None]


def stage_maps(
    spatial: Mapping[str, torch.Tensor],
    stages: list[str],
    size: tuple[int, int],
    *,
    slot_keys: Collection[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Average, per stage, of the maps at the image size, each normalised to sum 1 first: {stage: (B, H, W)}.

    With ``slot_keys`` (``AttentionMaps.slot_keys``), a stage's transformer attention layers are averaged
    apart from its slots, as ``"<stage> attn"``.
    """
    groups: dict[str, list[torch.Tensor]] = {}
    for key, value in spatial.items():
        stage = stage_of(key, stages)
        if slot_keys is not None and key not in slot_keys and stage != key:
            stage = f"{stage} attn"
        groups.setdefault(stage, []).append(normalise_mass(resize_maps(value, size)))
    return {stage: torch.stack(values).mean(0) for stage, values in groups.items()}


Boxes = torch.Tensor | np.ndarray | Sequence[np.ndarray]  # (B, 4), or one (k, 4) array per image (detection)


def box_masks(boxes: Boxes, size: tuple[int, int]) -> torch.Tensor:
    """(B, 4) (x0, y0, x1, y1) pixel boxes -> (B, H, W) bool: pixels whose centre lies in the box.

    A list of (k, 4) arrays (an image's objects) gives the union of each image's boxes.
    """
    if isinstance(boxes, (list, tuple)):
        masks = [box_masks(np.asarray(b, np.float32).reshape(-1, 4), size).any(0) for b in boxes]
        return torch.stack(masks) if masks else torch.zeros(0, *size, dtype=torch.bool)
    boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise BadValueError(f"boxes must be (B, 4) (x0, y0, x1, y1) in pixels, got shape {tuple(boxes.shape)}")
    ys = torch.arange(size[0], dtype=torch.float32) + 0.5
    xs = torch.arange(size[1], dtype=torch.float32) + 0.5
    inside_y = (ys[None] >= boxes[:, 1:2]) & (ys[None] <= boxes[:, 3:4])  # (B, H)
    inside_x = (xs[None] >= boxes[:, 0:1]) & (xs[None] <= boxes[:, 2:3])  # (B, W)
    return inside_y[:, :, None] & inside_x[:, None, :]  # (B, H, W)


def mass_in_boxes(
    maps: Mapping[str, torch.Tensor], boxes: Boxes, *, img_size: int | tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Share of each (B, h, w) non-negative map's mass inside the image's box: {key: (B,)} in [0, 1].

    Maps are brought to the image size (cells repeated when the size divides, else bilinear); a
    uniform map scores the box's area share (``box_area_fraction``).
    """
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    masks = box_masks(boxes, size)  # (B, H, W)
    out = {}
    for key, value in maps.items():
        if value.shape[0] != masks.shape[0]:
            raise BadValueError(f"map {key!r} has {value.shape[0]} images but there are {masks.shape[0]} boxes")
        mass = normalise_mass(resize_maps(value.detach().cpu(), size))  # (B, H, W)
        out[key] = (mass * masks).flatten(1).sum(1)
    return out


def box_area_fraction(boxes: Boxes, *, img_size: int | tuple[int, int]) -> torch.Tensor:
    """(B,) share of the image's pixels inside each box: what a uniform map scores in ``mass_in_boxes``."""
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return box_masks(boxes, size).flatten(1).float().mean(1)


def box_mass_report(
    model: nn.Module,
    images: torch.Tensor,
    boxes: Boxes,
    *,
    batch_size: int = 50,
    pattern: str | None = None,
    with_gradcam: bool = True,
) -> dict[str, float]:
    """Mean share of attention mass inside the boxes over ``images`` (B, C, H, W), normalised as the model expects.

    Keys: every captured spatial map, ``stage:<name>`` (the per-stage averages), ``gradcam`` and
    ``box_area`` (the uniform baseline). Runs in eval mode.
    """
    if batch_size < 1:
        raise BadValueError(f"box_mass_report: batch_size must be >= 1, got {batch_size}")
    if not isinstance(boxes, (list, tuple)):
        boxes = torch.as_tensor(np.asarray(boxes), dtype=torch.float32)
    size = (images.shape[-2], images.shape[-1])
    stages = model_stages(model)
    sums: dict[str, float] = {}
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            batch, batch_boxes = images[start:start + batch_size], boxes[start:start + batch_size]
            with torch.no_grad(), capture(model) as maps:
                model(batch)
            check_pattern(pattern, maps)
            spatial = spatial_maps(maps, pattern=pattern)
            parts = dict(spatial)
            by_stage = stage_maps(spatial, stages, size, slot_keys=maps.slot_keys)
            parts.update({f"stage:{k}": v for k, v in by_stage.items() if k not in spatial})  # not a lone slot again
            if with_gradcam:
                parts["gradcam"] = grad_cam(model, batch)[0]
            for key, value in mass_in_boxes(parts, batch_boxes, img_size=size).items():
                sums[key] = sums.get(key, 0.0) + float(value.sum())
            sums["box_area"] = sums.get("box_area", 0.0) + float(box_area_fraction(batch_boxes, img_size=size).sum())
    return {key: total / images.shape[0] for key, total in sums.items()}
