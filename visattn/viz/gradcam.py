"""Grad-CAM (Selvaraju et al., 2017) on a backbone's last stage: a model-agnostic reference map."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from visattn.errors import BadValueError


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` for the body, the previous train/eval state of every submodule restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def find_backbone(model: nn.Module) -> nn.Module:
    """The first module (``model`` itself first) that reports its stages (``stage_info``)."""
    for module in model.modules():
        if getattr(module, "stage_info", None):
            return module
    raise BadValueError(f"{type(model).__name__} has no backbone with stage_info; Grad-CAM needs a visattn backbone "
                     "(or pass layer= explicitly)")


def last_stage(model: nn.Module) -> nn.Module:
    """The module producing the backbone's last stage output (the last block when the stage is a ModuleList)."""
    backbone = find_backbone(model)
    stage = backbone.get_submodule(backbone.stage_info[-1].name)
    if isinstance(stage, nn.ModuleList):  # ViT's blocks are iterated, not called
        stage = stage[-1]
    return stage


def as_nchw(acts: torch.Tensor, channels: int, image_size: tuple[int, int], prefix: int) -> torch.Tensor:
    """A stage output as (B, C, h, w): NCHW as is, channels-last permuted, tokens (B, prefix+N, C) laid on a grid."""
    if acts.ndim == 4 and acts.shape[1] == channels:
        return acts
    if acts.ndim == 4 and acts.shape[-1] == channels:
        return acts.permute(0, 3, 1, 2)  # (B, C, h, w)
    if acts.ndim == 3 and acts.shape[-1] == channels:
        patches = acts[:, prefix:]  # (B, N, C)
        count = patches.shape[1]
        height, width = image_size
        stride = round((height * width / count) ** 0.5)
        grid = (height // stride, width // stride)
        if grid[0] * grid[1] != count:
            raise BadValueError(f"cannot lay {count} tokens on a grid for a {height}x{width} image")
        return patches.transpose(1, 2).reshape(acts.shape[0], channels, *grid)  # (B, C, gh, gw)
    raise BadValueError(f"Grad-CAM layer output of shape {tuple(acts.shape)} has no axis of {channels} channels")


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    *,
    target: torch.Tensor | None = None,
    layer: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps (B, H, W) in [0, 1] at the image size, and the logits (B, classes).

    ``target``: class per image (default: the predicted one). ``layer``: default the last stage of the
    backbone. Uses ``torch.autograd.grad``, so no parameter's ``.grad`` is touched; run it in eval mode.
    """
    backbone = find_backbone(model)
    layer = layer if layer is not None else last_stage(model)
    channels = backbone.stage_info[-1].channels
    prefix = int(getattr(backbone, "num_prefix_tokens", 0))
    store: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        store["acts"] = output

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            inputs = images.detach().requires_grad_(True)  # a graph even when the weights are frozen
            logits = model(inputs)
            if logits.ndim != 2:
                raise BadValueError(f"Grad-CAM needs (B, classes) logits; the model returned {tuple(logits.shape)}")
            classes = logits.argmax(1) if target is None else target.to(logits.device).long()
            score = logits.gather(1, classes[:, None]).sum()
            acts = store["acts"]
            grads = torch.autograd.grad(score, acts)[0]
    finally:
        handle.remove()
    size = (images.shape[-2], images.shape[-1])
    acts = as_nchw(acts.detach(), channels, size, prefix)  # (B, C, h, w)
    grads = as_nchw(grads, channels, size, prefix)  # (B, C, h, w)
    weights = grads.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
    cam = F.relu((weights * acts).sum(1, keepdim=True))  # (B, 1, h, w)
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[:, 0]  # (B, H, W)
    peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    return cam / peak, logits.detach()
