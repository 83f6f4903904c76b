"""Vision Transformer (Dosovitskiy et al., 2021), named as timm's ``vit_*_patch16_224`` (weights load as-is).

Slots: ``input`` (on the image) and ``blocks.N.slot`` in every block on the MLP residual branch before
the add (role "block"). Block slots see the patch tokens as a (B, C, H/p, W/p) map; the class token
passes them untouched. The position embedding is resampled (bicubic) in forward when the input grid
differs from the construction grid, so any image size that is a multiple of the patch size works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, resample_abs_pos_embed
from torch import nn

from visattn.backbones.base import Backbone, StageInfo
from visattn.errors import BadValueError
from visattn.layers import AttentionSlot, apply_slot_tokens, require
from visattn.layers.record import attention_probs, record
from visattn.registry import BACKBONES

# name -> (embed_dim, depth, num_heads) of the published patch-16 variants
VIT_VARIANTS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; returns a (B, C, H/p, W/p) map."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    _capture: dict | None = None  # see visattn.layers.record (pointed at a store while capturing)

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        qkv = self.qkv(x).reshape(batch, tokens, 3, heads, head_dim)  # (B, N, 3, heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, N, head_dim)
        if self._capture is not None:
            record(self, "attn", attention_probs(q, k))  # (B, heads, N, N)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        x = x.transpose(1, 2).reshape(batch, tokens, channels)  # (B, N, C)
        return self.proj(x)


class Block(nn.Module):
    """Pre-norm transformer block; its slot sits on the MLP branch before the residual add."""

    num_prefix_tokens = 1

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.slot = AttentionSlot(dim, role="block")
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        branch = apply_slot_tokens(self.slot, self.mlp(self.norm2(x)), grid_size, self.num_prefix_tokens)
        return x + self.drop_path(branch)


class VisionTransformer(Backbone):
    classifier_name = "head"
    num_prefix_tokens = 1

    def __init__(
        self,
        *,
        variant: str = "vit",
        embed_dim: int,
        depth: int,
        num_heads: int,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        patch_size: int = 16,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        require(num_classes >= 0, variant, "num_classes", ">= 0", num_classes)
        require(in_chans >= 1, variant, "in_chans", ">= 1", in_chans)
        require(patch_size >= 1, variant, "patch_size", ">= 1", patch_size)
        require(img_size >= patch_size and img_size % patch_size == 0, variant, "img_size",
                f"a positive multiple of patch_size={patch_size}", img_size)
        require(depth >= 1, variant, "depth", ">= 1", depth)
        require(num_heads >= 1, variant, "num_heads", ">= 1", num_heads)
        require(embed_dim >= 1 and embed_dim % num_heads == 0, variant, "embed_dim",
                f"a positive multiple of num_heads={num_heads}", embed_dim)
        require(mlp_ratio > 0, variant, "mlp_ratio", "> 0", mlp_ratio)
        require(0.0 <= drop_rate < 1.0, variant, "drop_rate", "in [0, 1)", drop_rate)
        require(0.0 <= drop_path_rate < 1.0, variant, "drop_path_rate", "in [0, 1)", drop_path_rate)
        self.variant = variant
        self.num_classes = num_classes
        self.num_features = embed_dim
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.stage_info = [StageInfo("blocks", embed_dim, patch_size)]

        self.input = AttentionSlot(in_chans, role="input")
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_tokens = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear in depth, as timm
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, rate) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters the optimiser must not decay (timm's convention, read by ``make_optimizer``)."""
        return {"pos_embed", "cls_token"}

    def reset_classifier(self, num_classes: int) -> None:
        require(num_classes >= 0, self.variant, "num_classes", ">= 0", num_classes)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def check_input_size(self, height: int, width: int) -> None:
        super().check_input_size(height, width)
        if height % self.patch_size or width % self.patch_size:
            raise BadValueError(
                f"{self.variant}: image size {height}x{width} is not supported; height and width must be "
                f"multiples of the patch size {self.patch_size}"
            )

    def adapt_pretrained(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Resample a pretrained ``pos_embed`` made for another image size to this model's grid."""
        pos = state_dict.get("pos_embed")
        if pos is not None and pos.shape != self.pos_embed.shape and pos.shape[-1] == self.pos_embed.shape[-1]:
            side = round((pos.shape[1] - self.num_prefix_tokens) ** 0.5)
            state_dict = {**state_dict, "pos_embed": resample_abs_pos_embed(
                pos, new_size=list(self.grid_size), old_size=[side, side], num_prefix_tokens=self.num_prefix_tokens)}
        return state_dict

    def position_embedding(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """Position embedding for ``grid_size``, bicubic-resampled from the construction grid if needed."""
        if grid_size == self.grid_size:
            return self.pos_embed
        return resample_abs_pos_embed(self.pos_embed, new_size=list(grid_size), old_size=list(self.grid_size),
                                      num_prefix_tokens=self.num_prefix_tokens)

    def _tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normed token sequence (B, 1+N, C) and the patch grid it was laid out on."""
        self.check_input_size(x.shape[-2], x.shape[-1])
        x = self.patch_embed(self.input(x))  # (B, C, H/p, W/p)
        grid_size = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1+N, C)
        x = x + self.position_embedding(grid_size)
        for block in self.blocks:
            x = block(x, grid_size)
        return self.norm(x), grid_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._tokens(x)[0]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.head_drop(x[:, 0]))

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x, (height, width) = self._tokens(x)
        patches = x[:, self.num_prefix_tokens:].transpose(1, 2)  # (B, C, N)
        return [patches.reshape(x.shape[0], x.shape[2], height, width)]  # (B, C, H/p, W/p)


def _vit_builder(name: str) -> None:
    published_dim, published_depth, published_heads = VIT_VARIANTS[name]

    def build(
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        patch_size: int = 16,
        depth: int | None = None,
        embed_dim: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> VisionTransformer:
        return VisionTransformer(
            variant=name,
            embed_dim=published_dim if embed_dim is None else embed_dim,
            depth=published_depth if depth is None else depth,
            num_heads=published_heads if num_heads is None else num_heads,
            num_classes=num_classes, in_chans=in_chans, img_size=img_size, patch_size=patch_size,
            mlp_ratio=mlp_ratio, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
        )

    build.__name__ = name
    build.__doc__ = (f"{name}: embed {published_dim}, depth {published_depth}, heads {published_heads} "
                     "(None keeps the published value); timm's vit_*_patch16_224 weights load strictly.")
    BACKBONES.register(name)(build)


for _name in VIT_VARIANTS:
    _vit_builder(_name)
