"""Swin Transformer (Liu et al., 2021): window attention with shifted windows, named as timm names it.

Parameter names equal timm's ``swin_*_patch4_window7_224`` except ``layers.`` -> ``stages.`` and
``head.fc`` -> ``head`` (see ``SwinTransformer.convert_state_dict``). The layout inside is channels-last
(B, H, W, C); patch merging runs at the start of stages 1..3, as in timm.

Any input whose sides are multiples of the patch size works: each stage pads its map to a multiple of
the window (after ``norm1``, before the shift, as the official detection code does) and builds the
shift mask for that padded size. Along an axis no longer than the window, the window shrinks to the
map and that axis is not shifted (the official rule, applied per axis as timm does); the relative
position bias of a smaller window is read from the centre of the full table.

Slots: ``input`` (on the image), ``stages.I.blocks.J.slot`` on the MLP branch of every block before
the residual add (role "block"), ``stages.I.slot`` after each stage (role "stage").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import nn

from visattn.backbones.base import Backbone, StageInfo
from visattn.errors import BadValueError
from visattn.layers import AttentionSlot, apply_slot_nhwc, require
from visattn.layers.record import attention_probs, record
from visattn.registry import BACKBONES

MASK_VALUE = -100.0  # additive logit for blocked pairs, as in the official code (exp(-100) ~ 4e-44)


def window_partition(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) with H, W multiples of the window -> (B*nW, wh*ww, C), windows in row-major order."""
    batch, height, width, channels = x.shape
    wh, ww = window
    x = x.view(batch, height // wh, wh, width // ww, ww, channels)  # (B, nH, wh, nW_w, ww, C)
    return x.transpose(2, 3).reshape(-1, wh * ww, channels)  # (B*nW, wh*ww, C)


def window_reverse(windows: torch.Tensor, window: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Inverse of ``window_partition``: (B*nW, wh*ww, C) -> (B, H, W, C)."""
    wh, ww = window
    channels = windows.shape[-1]
    x = windows.view(-1, height // wh, width // ww, wh, ww, channels)  # (B, nH, nW_w, wh, ww, C)
    return x.transpose(2, 3).reshape(-1, height, width, channels)  # (B, H, W, C)


def relative_position_index(window: tuple[int, int], table_window: tuple[int, int]) -> torch.Tensor:
    """(N, N) row of the bias table for each query/key pair of a window inside a ``table_window`` table."""
    wh, ww = window
    th, tw = table_window
    ys, xs = torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N): query minus key
    return (rel[0] + th - 1) * (2 * tw - 1) + (rel[1] + tw - 1)  # (N, N)


def stage_window(height: int, width: int, window_size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Window and shift for a map: an axis no longer than the window gets window = size and no shift."""
    window = (min(height, window_size), min(width, window_size))
    shift = tuple(0 if size <= window_size else window_size // 2 for size in (height, width))
    return window, (shift[0], shift[1])


def shift_window_mask(
    height: int,
    width: int,
    window: tuple[int, int],
    shift: tuple[int, int],
    device: torch.device | None = None,
) -> torch.Tensor:
    """Additive (nW, N, N) mask for a padded map rolled by -shift: 0 within a region, -100 across regions.

    After the roll, the last ``window`` rows (columns) hold pieces that were not neighbours in the
    image (the wrap-around); tokens are labelled by region and pairs with different labels are blocked.
    """
    def labels(size: int, win: int, sft: int) -> torch.Tensor:
        idx = torch.arange(size, device=device)
        return (idx >= size - win).long() + (idx >= size - sft).long()  # 0, 1, 2 (only 0, 1 when sft == 0)

    region = labels(height, window[0], shift[0])[:, None] * 3 + labels(width, window[1], shift[1])  # (H, W)
    region = window_partition(region[None, :, :, None], window).squeeze(-1)  # (nW, N)
    blocked = region[:, :, None] != region[:, None, :]  # (nW, N, N)
    return torch.zeros(blocked.shape, device=device).masked_fill(blocked, MASK_VALUE)


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch conv, then LayerNorm: (B, C_in, H, W) -> (B, H/patch, W/patch, C)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # (B, H/patch, W/patch, C)


class WindowAttention(nn.Module):
    """Multi-head self attention inside windows with a learned relative position bias."""

    _capture: dict | None = None  # see visattn.layers.record (pointed at a store while capturing)

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_size = (window_size, window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        index = relative_position_index(self.window_size, self.window_size)  # (N, N)
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self, window: tuple[int, int]) -> torch.Tensor:
        """(heads, N, N) bias for a window (the full one or a smaller one read from the table's centre)."""
        if window == self.window_size:
            index = self.relative_position_index
        else:
            index = relative_position_index(window, self.window_size).to(self.relative_position_index.device)
        n = window[0] * window[1]
        bias = self.relative_position_bias_table[index.view(-1)].view(n, n, self.num_heads)  # (N, N, heads)
        return bias.permute(2, 0, 1)  # (heads, N, N)

    def forward(self, x: torch.Tensor, window: tuple[int, int], mask: torch.Tensor | None) -> torch.Tensor:
        """(B*nW, N, C) -> (B*nW, N, C); ``mask`` is the (nW, N, N) shift mask or None."""
        batch_windows, n, channels = x.shape
        qkv = self.qkv(x).view(batch_windows, n, 3, self.num_heads, -1)  # (B*nW, N, 3, heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B*nW, heads, N, head_dim)
        attn_mask = self.position_bias(window)[None]  # (1, heads, N, N)
        if mask is not None:
            num_windows = mask.shape[0]
            attn_mask = attn_mask + mask[:, None]  # (nW, heads, N, N)
            attn_mask = attn_mask.repeat(batch_windows // num_windows, 1, 1, 1)  # (B*nW, heads, N, N)
        attn_mask = attn_mask.to(q.dtype)
        if self._capture is not None:
            record(self, "attn", attention_probs(q, k, attn_mask))  # (B*nW, heads, N, N)
        if torch.compiler.is_exporting():
            # torch 2.14's ONNX exporter cannot decompose SDPA with a mask under a dynamic batch; same maths spelled out
            weights = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1) + attn_mask  # (B*nW, heads, N, N)
            out = weights.softmax(-1) @ v  # (B*nW, heads, N, hd)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B*nW, heads, N, hd)
        return self.proj(out.transpose(1, 2).reshape(batch_windows, n, channels))  # (B*nW, N, C)


class SwinTransformerBlock(nn.Module):
    """(Shifted) window attention then MLP, pre-norm, on a (B, H, W, C) map."""

    def __init__(
        self, dim: int, heads: int, window_size: int, shifted: bool, mlp_ratio: float, drop_path_rate: float
    ) -> None:
        super().__init__()
        self.shifted = shifted
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.slot = AttentionSlot(dim, role="block")

    def forward(
        self, x: torch.Tensor, window: tuple[int, int], shift: tuple[int, int], mask: torch.Tensor | None
    ) -> torch.Tensor:
        _, height, width, _ = x.shape
        pad_h, pad_w = (-height) % window[0], (-width) % window[1]
        y = self.norm1(x)
        if pad_h or pad_w:
            y = F.pad(y, (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, C)
        padded_h, padded_w = height + pad_h, width + pad_w
        if any(shift):
            y = torch.roll(y, shifts=(-shift[0], -shift[1]), dims=(1, 2))  # (B, Hp, Wp, C)
        y = self.attn(window_partition(y, window), window, mask)  # (B*nW, wh*ww, C)
        y = window_reverse(y, window, padded_h, padded_w)  # (B, Hp, Wp, C)
        if any(shift):
            y = torch.roll(y, shifts=shift, dims=(1, 2))  # (B, Hp, Wp, C)
        if pad_h or pad_w:
            y = y[:, :height, :width]  # (B, H, W, C)
        x = x + self.drop_path(y)
        y = apply_slot_nhwc(self.slot, self.mlp(self.norm2(x)))  # (B, H, W, C)
        return x + self.drop_path(y)


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood ((row, col) order (0,0), (1,0), (0,1), (1,1)), norm, 4C -> 2C."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = x.shape
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))  # (B, H + H%2, W + W%2, C)
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]  # 4x(B, H/2, W/2, C)
        x = torch.cat(parts, dim=-1)  # (B, H/2, W/2, 4C)
        return self.reduction(self.norm(x))  # (B, H/2, W/2, 2C)


class SwinTransformerStage(nn.Module):
    """Optional patch merging, then blocks alternating plain and shifted windows, then the stage slot."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        downsample: bool,
        mlp_ratio: float,
        drop_path_rates: Sequence[float],
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.downsample = PatchMerging(dim, out_dim) if downsample else nn.Identity()
        self.blocks = nn.ModuleList(
            SwinTransformerBlock(out_dim, num_heads, window_size, i % 2 == 1, mlp_ratio, drop_path_rates[i])
            for i in range(depth)
        )
        self.slot = AttentionSlot(out_dim, role="stage")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)  # (B, H, W, C)
        _, height, width, _ = x.shape
        window, shift = stage_window(height, width, self.window_size)
        mask = None
        if any(shift):  # built once per forward for the actual padded size, shared by the shifted blocks
            padded = (height + (-height) % window[0], width + (-width) % window[1])
            mask = shift_window_mask(*padded, window, shift, device=x.device)  # (nW, N, N)
        for block in self.blocks:
            if block.shifted:
                x = block(x, window, shift, mask)
            else:
                x = block(x, window, (0, 0), None)
        return apply_slot_nhwc(self.slot, x)


class SwinTransformer(Backbone):
    classifier_name = "head"

    def __init__(
        self,
        name: str,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        patch_size: int = 4,
        window_size: int = 7,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
    ) -> None:
        super().__init__()
        require(num_classes >= 0, name, "num_classes", ">= 0", num_classes)
        require(patch_size >= 1, name, "patch_size", ">= 1", patch_size)
        require(window_size >= 1, name, "window_size", ">= 1", window_size)
        require(len(depths) >= 1 and min(depths) >= 1, name, "depths", "one or more ints >= 1", depths)
        require(len(num_heads) == len(depths), name, "num_heads", f"one per stage ({len(depths)})", num_heads)
        dims = [embed_dim * 2**index for index in range(len(depths))]
        require(
            all(h >= 1 and d % h == 0 for d, h in zip(dims, num_heads, strict=True)),
            name, "num_heads", f"divisors of the stage widths {dims}", num_heads,
        )
        require(0.0 <= drop_path_rate < 1.0, name, "drop_path_rate", "in [0, 1)", drop_path_rate)
        self.name = name
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.check_input_size(img_size, img_size)
        self.img_size = img_size

        self.input = AttentionSlot(in_chans, role="input")
        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_size)
        total = sum(depths)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear in depth, 0 first
        stages = []
        self.stage_info = []
        for index, depth in enumerate(depths):
            start = sum(depths[:index])
            stages.append(SwinTransformerStage(
                dims[max(index - 1, 0)], dims[index], depth, num_heads[index], window_size,
                downsample=index > 0, mlp_ratio=mlp_ratio, drop_path_rates=rates[start:start + depth],
            ))
            self.stage_info.append(StageInfo(f"stages.{index}", dims[index], patch_size * 2**index))
        self.stages = nn.Sequential(*stages)
        self.num_features = dims[-1]
        self.norm = nn.LayerNorm(self.num_features)
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @classmethod
    def convert_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """timm (or Microsoft) Swin keys -> these: ``layers.`` -> ``stages.``, ``head.fc.`` -> ``head.``.

        Non-persistent buffers (``relative_position_index``, ``attn_mask``) are dropped. Microsoft's files
        merge patches at the end of a stage; their ``layers.I.downsample`` becomes ``stages.I+1.downsample``.
        """
        end_merging = "layers.0.downsample.reduction.weight" in state_dict
        out = {}
        for key, value in state_dict.items():
            if key.endswith(("relative_position_index", "attn_mask")):
                continue
            if key.startswith("layers."):
                _, index, rest = key.split(".", 2)
                if end_merging and rest.startswith("downsample."):
                    index = str(int(index) + 1)
                key = f"stages.{index}.{rest}"
            elif key.startswith("head.fc."):
                key = "head." + key[len("head.fc."):]
            out[key] = value
        return out

    def check_input_size(self, height: int, width: int) -> None:
        super().check_input_size(height, width)
        if height % self.patch_size or width % self.patch_size:
            raise BadValueError(
                f"{self.name}: image size {height}x{width} is not supported; height and width must be "
                f"multiples of the patch size {self.patch_size}"
            )

    def no_weight_decay(self) -> set[str]:
        """Parameters the optimiser must not decay (timm's convention, read by ``make_optimizer``)."""
        return {name for name, _ in self.named_parameters() if name.endswith("relative_position_bias_table")}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) image -> (B, H/patch, W/patch, embed_dim)."""
        self.check_input_size(x.shape[-2], x.shape[-1])
        return self.patch_embed(self.input(x))  # (B, H/patch, W/patch, C)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x.permute(0, 3, 1, 2))  # (B, C, H, W)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.stages(self.stem(x)))  # (B, H/32, W/32, C)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(x.mean(dim=(1, 2))))  # (B, num_classes)


# published configurations: (embed_dim, depths, num_heads, drop_path_rate of the ImageNet-1k recipe)
SWIN_VARIANTS = {
    "swin_t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 0.2),
    "swin_s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 0.3),
}


def _swin_builder(name: str) -> None:
    embed_default, depths_default, heads_default, dpr_default = SWIN_VARIANTS[name]

    def build(
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        patch_size: int = 4,
        window_size: int = 7,
        embed_dim: int | None = None,
        depths: tuple[int, ...] | None = None,
        num_heads: tuple[int, ...] | None = None,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float | None = None,
    ) -> SwinTransformer:
        return SwinTransformer(
            name, num_classes=num_classes, in_chans=in_chans, img_size=img_size, patch_size=patch_size,
            window_size=window_size, embed_dim=embed_default if embed_dim is None else embed_dim,
            depths=depths_default if depths is None else depths,
            num_heads=heads_default if num_heads is None else num_heads, mlp_ratio=mlp_ratio,
            drop_rate=drop_rate, drop_path_rate=dpr_default if drop_path_rate is None else drop_path_rate,
        )

    build.__name__ = name
    build.__doc__ = (
        f"{name}: embed {embed_default}, depths {list(depths_default)}, heads {list(heads_default)}, "
        f"window 7, patch 4; None = these published values (drop_path_rate {dpr_default})."
    )
    BACKBONES.register(name)(build)


_swin_builder("swin_t")
_swin_builder("swin_s")
