"""Multi-head self-attention over the H*W positions of a feature map, with a 2D positional encoding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visattn.layers import require
from visattn.layers.gate import check_init
from visattn.layers.record import attention_probs, record
from visattn.registry import ATTENTION

POS_ENCODINGS = ("sinusoidal", "learned", "none")


def default_heads(channels: int, max_heads: int = 8, min_head_dim: int = 16) -> int:
    """Up to ``max_heads`` heads of at least ``min_head_dim`` channels each, dividing ``channels``."""
    limit = max(1, min(max_heads, channels // min_head_dim))
    return max(h for h in range(1, limit + 1) if channels % h == 0)


def sinusoidal_2d(channels: int, height: int, width: int, *, device=None, dtype=None) -> torch.Tensor:
    """Fixed 2D sine/cosine encoding (C, H, W): a quarter of the channels each for sin/cos of y and x."""
    quarter = channels // 4
    out = torch.zeros(channels, height, width, device=device, dtype=torch.float32)
    if quarter > 0:
        freq = torch.exp(
            torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(10000.0) / quarter)
        )  # (C/4,)
        ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freq  # (H, C/4)
        xs = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freq  # (W, C/4)
        out[0 * quarter:1 * quarter] = ys.sin().t()[:, :, None].expand(quarter, height, width)
        out[1 * quarter:2 * quarter] = ys.cos().t()[:, :, None].expand(quarter, height, width)
        out[2 * quarter:3 * quarter] = xs.sin().t()[:, None, :].expand(quarter, height, width)
        out[3 * quarter:4 * quarter] = xs.cos().t()[:, None, :].expand(quarter, height, width)
    return out.to(dtype or torch.float32)


@ATTENTION.register("mhsa")
class MultiHeadSelfAttention2d(nn.Module):
    """Returns ``x + proj(SDPA(q, k, v))`` over all positions; ``proj`` starts at zero, so the block starts as identity.

    ``qkv`` and ``proj`` are laid out as ``nn.MultiheadAttention``'s ``in_proj`` and ``out_proj``.
    The positional encoding enters the attention scores only, as in DETR: ``q = W_q (x + p)``,
    ``k = W_k (x + p)``, ``v = W_v x``. Added to the tokens before all three projections (as before),
    it reached the values and so the residual stream: in a ResNet slot, whose input is exactly 0 at
    initialisation (zero-initialised last BatchNorm), every image got the same positional pattern.
    ``norm=True`` (default) applies a LayerNorm over channels to the tokens first (pre-norm, as in
    ViT), so the scores do not depend on the scale of the slot's input: 2C more parameters than
    ``nn.MultiheadAttention``. ``heads=None`` picks up to 8 heads of at least 16 channels each.
    ``init`` is accepted for the common block interface: with the zero ``proj``, "paper" and "identity" are the
    same, an exact identity at initialisation.
    """

    _capture: dict | None = None  # see visattn.layers.record (pointed at a store while capturing)

    def __init__(
        self,
        channels: int,
        *,
        heads: int | None = None,
        pos_encoding: str = "sinusoidal",
        learned_size: int = 16,
        qkv_bias: bool = True,
        dropout: float = 0.0,
        norm: bool = True,
        init: str = "paper",
    ) -> None:
        super().__init__()
        check_init("mhsa", init)
        if heads is None:
            heads = default_heads(channels)
        require(isinstance(heads, int) and heads >= 1 and channels % heads == 0, "mhsa", "heads",
                f"a positive divisor of channels={channels}", heads)
        require(pos_encoding in POS_ENCODINGS, "mhsa", "pos_encoding", f"one of {list(POS_ENCODINGS)}",
                pos_encoding)
        require(isinstance(learned_size, int) and learned_size >= 1, "mhsa", "learned_size", "an int >= 1",
                learned_size)
        require(0.0 <= dropout < 1.0, "mhsa", "dropout", "in [0, 1)", dropout)
        require(isinstance(norm, bool), "mhsa", "norm", "true or false", norm)
        self.heads = heads
        self.head_dim = channels // heads
        self.pos_encoding = pos_encoding
        self.dropout = dropout
        self.norm = nn.LayerNorm(channels) if norm else nn.Identity()
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        if pos_encoding == "learned":
            self.pos_embed = nn.Parameter(torch.randn(1, channels, learned_size, learned_size) * 0.02)

    def no_weight_decay(self) -> set[str]:
        """The learned position table is not decayed (read by ``visattn.tasks.common.make_optimizer``)."""
        return {"pos_embed"} if self.pos_encoding == "learned" else set()

    def position(self, channels: int, height: int, width: int, like: torch.Tensor) -> torch.Tensor | None:
        if self.pos_encoding == "sinusoidal":
            return sinusoidal_2d(channels, height, width, device=like.device, dtype=like.dtype)[None]
        if self.pos_encoding == "learned":
            return F.interpolate(self.pos_embed, size=(height, width), mode="bilinear", align_corners=False)
        return None

    def attend(self, tokens: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over (B, N, C) tokens, without the residual; ``pos`` (1, N, C) enters q and k only."""
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
        if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
            # torch's fused CPU kernel is 2-8x slower forward + backward in bf16 than in float32 at these sizes
            # (benchmarks/README.md, "attention tax"): attend in float32 (autocast off, or it would cast the
            # inputs back to bf16), the projections stay in bf16
            with torch.autocast("cpu", enabled=False):
                out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), dropout_p=dropout)
            out = out.to(q.dtype)  # (B, heads, N, head_dim)
        else:  # CUDA's fused bf16 kernels are the fast path there (their softmax is float32)
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
