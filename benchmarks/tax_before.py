"""The attention blocks' forward code as it was before issue 21's speed work (main at the identity-init commit
7c66dbb), for side-by-side timing.

``apply_variant(model, "before")`` switches every SE / ECA / CBAM-half / STN / MHSA module of ``model`` to a
subclass whose methods are verbatim copies of the old ones (same parameters, same state dict), so
``benchmarks/attention_tax.py --variants se:before`` times the old and the new code alternating in one process.
Only for benchmarks: nothing in visattn imports this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visattn.attention.cbam import ChannelGate, SpatialGate
from visattn.attention.eca import EfficientChannelAttention
from visattn.attention.mhsa import MultiHeadSelfAttention2d
from visattn.attention.se import SqueezeExcite
from visattn.attention.stn import SpatialTransformer
from visattn.layers.gate import gate
from visattn.layers.record import attention_probs, record


class full_precision:  # noqa: N801 - the old visattn.layers.precision.full_precision: converts the whole input
    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.device = x.device.type
        self.active = torch.is_autocast_enabled(self.device)
        self.context = None

    def __enter__(self) -> torch.Tensor:
        if not self.active:
            return self.x
        self.context = torch.autocast(device_type=self.device, enabled=False)
        self.context.__enter__()
        return self.x.float()

    def __exit__(self, *exc: object) -> None:
        if self.context is not None:
            self.context.__exit__(*exc)
            self.context = None


class OldSqueezeExcite(SqueezeExcite):
    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x) as x:
            squeezed = x.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
            return gate(self.fc2(self.act(self.fc1(squeezed))), self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.channel_weights(x)  # (B, C, 1, 1)
        record(self, "channel", weights.flatten(1))
        return (x * weights).to(x.dtype)


class OldEfficientChannelAttention(EfficientChannelAttention):
    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        with full_precision(x) as x:
            squeezed = x.mean((2, 3)).view(batch, 1, -1)  # (B, 1, C)
            logits = self.conv(squeezed).view(batch, -1, 1, 1)  # (B, C, 1, 1)
            return gate(logits, self.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.channel_weights(x)  # (B, C, 1, 1)
        record(self, "channel", weights.flatten(1))
        return (x * weights).to(x.dtype)


class OldChannelGate(ChannelGate):
    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x) as x:
            avg = self.mlp(x.mean((2, 3)))  # (B, C)
            mx = self.mlp(x.amax((2, 3)))  # (B, C)
            return gate(avg + mx, self.init)[:, :, None, None]  # (B, C, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.channel_weights(x)  # (B, C, 1, 1)
        record(self, "channel", weights.flatten(1))
        return (x * weights).to(x.dtype)


class OldSpatialGate(SpatialGate):
    def spatial_map(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x) as x:
            pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)  # (B, 2, H, W)
            return gate(self.bn(self.conv(pooled)), self.init)  # (B, 1, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.spatial_map(x)  # (B, 1, H, W)
        record(self, "spatial", weights[:, 0])
        return (x * weights).to(x.dtype)


class OldSpatialTransformer(SpatialTransformer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x) as x32:
            theta = self.theta(x32)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
            out = F.grid_sample(x32, grid, mode="bilinear", padding_mode=self.padding_mode, align_corners=False)
        record(self, "theta", theta)
        record(self, "grid", grid)
        if self.training:
            self._accumulate(theta.detach(), grid.detach())
        return out.to(x.dtype)


class OldMultiHeadSelfAttention2d(MultiHeadSelfAttention2d):
    def attend(self, tokens: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, channels = tokens.shape
        tokens = self.norm(tokens)
        if pos is None:
            qkv = self.qkv(tokens)  # (B, N, 3C)
        else:
            weight, bias = self.qkv.weight, self.qkv.bias
            qk = F.linear(tokens + pos.to(tokens.dtype), weight[:2 * channels],
                          None if bias is None else bias[:2 * channels])  # (B, N, 2C)
            v = F.linear(tokens, weight[2 * channels:], None if bias is None else bias[2 * channels:])  # (B, N, C)
            qkv = torch.cat([qk, v], dim=-1)  # (B, N, 3C)
        qkv = qkv.view(batch, length, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        dropout = self.dropout if self.training else 0.0
        if self._capture is not None:
            record(self, "attn", attention_probs(q, k))  # (B, heads, N, N)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # (B, heads, N, head_dim)
        out = out.transpose(1, 2).reshape(batch, length, channels)  # (B, N, C)
        return self.proj(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        pos = self.position(channels, height, width, x)  # (1, C, H, W) or None
        if pos is not None:
            pos = pos.flatten(2).transpose(1, 2)  # (1, N, C)
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        out = self.attend(tokens, pos)  # (B, N, C)
        return x + out.transpose(1, 2).reshape(batch, channels, height, width).to(x.dtype)


OLD = {SqueezeExcite: OldSqueezeExcite, EfficientChannelAttention: OldEfficientChannelAttention,
       ChannelGate: OldChannelGate, SpatialGate: OldSpatialGate, SpatialTransformer: OldSpatialTransformer,
       MultiHeadSelfAttention2d: OldMultiHeadSelfAttention2d}


def apply_variant(model: nn.Module, variant: str) -> nn.Module:
    """Switch ``model``'s blocks to the ``variant`` code in place ("before": the code before issue 21)."""
    if variant != "before":
        raise ValueError(f"unknown variant {variant!r}; valid: before")
    for module in model.modules():
        old = OLD.get(type(module))
        if old is not None:
            module.__class__ = old
    return model
