"""Maps derived from raw attention: received mass, Swin windows back in place, ViT rollout, STN sample density."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from visattn.errors import BadValueError


def token_mass(attn: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Attention each of the H*W positions receives, averaged over heads and queries: (B, H, W), sums to 1."""
    batch = attn.shape[0]
    return attn.mean(1).mean(1).view(batch, *size)  # (B, H, W)


def windows_to_image(
    values: torch.Tensor, window: tuple[int, int], shift: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """(B*nW, wh*ww) per-window values (row-major windows of a map rolled by -shift) -> (B, H, W) image layout.

    The inverse of Swin's pad -> roll(-shift) -> window_partition: windows go back in place, the roll
    is undone and the padding cropped.
    """
    height, width = size
    wh, ww = window
    rows, cols = -(-height // wh), -(-width // ww)  # windows per column / row of the padded map
    x = values.reshape(-1, rows, cols, wh, ww)  # (B, nH, nW_w, wh, ww)
    x = x.permute(0, 1, 3, 2, 4).reshape(-1, rows * wh, cols * ww)  # (B, Hp, Wp)
    if any(shift):
        x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :height, :width]  # (B, H, W)


def window_mass(
    attn: torch.Tensor, window: tuple[int, int], shift: tuple[int, int], size: tuple[int, int]
) -> torch.Tensor:
    """Swin (B*nW, heads, N, N) window attention -> (B, H, W) attention received per token (each window sums to 1)."""
    received = attn.mean(1).mean(1)  # (B*nW, N)
    return windows_to_image(received, window, shift, size)


def class_attention(attn: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """ViT (B, heads, T, T) -> (B, gh, gw): the class token's attention to each patch, averaged over heads."""
    row = attn.mean(1)[:, 0, prefix:]  # (B, N)
    return row.reshape(-1, *grid)  # (B, gh, gw)


def attention_rollout(attns: Sequence[torch.Tensor], *, residual: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) over layers of (B, heads, T, T): (B, T, T), rows sum to 1.

    Each layer's head-averaged attention is mixed with the identity for the residual path
    (``residual * I + (1 - residual) * A``), rows renormalised, and the layers multiplied, last on the left.
    """
    if not attns:
        raise BadValueError("attention_rollout needs at least one layer of attention")
    if not 0.0 <= residual <= 1.0:
        raise BadValueError(f"attention_rollout: residual must be in [0, 1], got {residual}")
    tokens = attns[0].shape[-1]
    eye = torch.eye(tokens, device=attns[0].device)
    result = eye.expand(attns[0].shape[0], tokens, tokens)  # (B, T, T)
    for attn in attns:
        mixed = residual * eye + (1.0 - residual) * attn.float().mean(1)  # (B, T, T)
        mixed = mixed / mixed.sum(-1, keepdim=True)
        result = mixed @ result
    return result


def class_row_map(matrix: torch.Tensor, grid: tuple[int, int], prefix: int) -> torch.Tensor:
    """The class token's row of a rollout matrix over the patches, renormalised to sum 1: (B, gh, gw)."""
    row = matrix[:, 0, prefix:]  # (B, N)
    row = row / row.sum(-1, keepdim=True).clamp_min(1e-12)
    return row.reshape(-1, *grid)  # (B, gh, gw)


def sample_density(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Where an STN sampling grid (B, Ho, Wo, 2) reads its (H, W) input: (B, H, W), the share of samples per pixel.

    Each sample is split bilinearly over its four neighbouring pixels, as ``grid_sample`` reads them;
    coordinates follow ``affine_grid(align_corners=False)``; weight falling outside the input (padding) is dropped.
    """
    height, width = size
    batch = grid.shape[0]
    x = (((grid[..., 0] + 1) * width - 1) / 2).flatten(1)  # (B, Ho*Wo) pixel coordinates
    y = (((grid[..., 1] + 1) * height - 1) / 2).flatten(1)
    x0, y0 = x.floor(), y.floor()
    counts = torch.zeros(batch, height * width, device=grid.device)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        col, row = x0 + dx, y0 + dy
        weight = (1 - (x - col).abs()) * (1 - (y - row).abs())  # (B, Ho*Wo)
        inside = (col >= 0) & (col < width) & (row >= 0) & (row < height)
        index = row.clamp(0, height - 1).long() * width + col.clamp(0, width - 1).long()  # (B, Ho*Wo)
        counts.scatter_add_(1, index, weight * inside)
    total = counts.sum(1, keepdim=True).clamp_min(1e-12)
    return (counts / total).view(batch, height, width)  # (B, H, W)
