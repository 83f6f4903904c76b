"""What each attention block computed on its last forward: ``with capture(model) as maps: model(x)``.

Blocks that can report something call ``record(self, name, tensor)`` from ``visattn.layers.record``
(the primitive lives below the blocks so they never import this package). While ``capture`` is active
it points each such block at the dict of its entry; otherwise ``record`` returns after one attribute
check and no hook is installed.

Entries (``maps[key]`` is a dict of tensors, batch first):

* one per filled slot, keyed by the slot's name: ``channel`` (B, C) for se / eca / channel_gate / cbam,
  ``spatial`` (B, H, W) for spatial_gate / cbam, ``theta`` (B, 2, 3), ``grid`` (B, H, W, 2) and
  ``samples`` (B, H, W: where the grid samples the input) for stn, ``attn`` (B, heads, N, N) and
  ``mass`` (B, H, W: attention each position receives, summing to 1) for mhsa; every slot entry also
  has ``input_size`` (H, W).
* one per transformer attention layer, keyed by its module path (``blocks.3.attn``,
  ``stages.1.blocks.0.attn``): ``attn`` (ViT: (B, heads, 1+N, 1+N); Swin: (B*nW, heads, N, N) per
  window) and a (B, H, W) map: ViT ``cls`` (the class token's attention over the patches), Swin
  ``mass`` (attention received per token, each window summing to 1, windows put back in place with the
  cyclic shift undone and the padding cropped).
* ViT: ``rollout`` (or ``<path>.rollout``): ``rollout`` (B, gh, gw), attention rollout from the class
  token (Abnar & Zuidema, 2020) normalised over the patches, and ``matrix`` (B, 1+N, 1+N).

Derived maps are computed after every forward of the captured module and when the block exits; after
several forwards the entries hold the last one.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from visattn.errors import BadValueError
from visattn.layers.record import attention_probs, can_record, is_recording, record, start_recording, stop_recording
from visattn.layers.slot import AttentionSlot

__all__ = ["AttentionMaps", "attention_probs", "capture", "record"]  # the primitives are re-exported from layers

Entry = dict[str, Any]


class AttentionMaps(dict):
    """``{key: {name: tensor}}`` filled by :func:`capture`; see the module docstring for the keys."""

    def __init__(self) -> None:
        super().__init__()
        self.rollouts: dict[str, list[str]] = {}  # rollout key -> the ViT attention keys it multiplies
        self.prefix_tokens: dict[str, int] = {}  # rollout key -> class/prefix tokens of that ViT
        self.slot_keys: set[str] = set()  # the keys that are slots (the others are transformer layers)

    def finish(self) -> AttentionMaps:
        """Compute the derived maps from what the last forward recorded (done for you after each forward)."""
        from visattn.viz import derive

        for entry in self.values():
            if "grid" in entry and "input_size" in entry:
                entry["samples"] = derive.sample_density(entry["grid"], entry["input_size"])
            if "layout" in entry and "attn" in entry:
                entry["mass"] = derive.window_mass(entry["attn"], *entry["layout"])
            elif "attn" in entry and "input_size" in entry:
                entry["mass"] = derive.token_mass(entry["attn"], entry["input_size"])
        for key, layers in self.rollouts.items():
            grid = self.get(key, {}).get("grid_size")
            attns = [self[layer]["attn"] for layer in layers if "attn" in self.get(layer, {})]
            if grid is None or len(attns) != len(layers):
                continue
            prefix = self.prefix_tokens[key]
            for layer in layers:
                self[layer]["cls"] = derive.class_attention(self[layer]["attn"], grid, prefix)
            matrix = derive.attention_rollout(attns)  # (B, T, T)
            self[key]["matrix"] = matrix
            self[key]["rollout"] = derive.class_row_map(matrix, grid, prefix)
        return self


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _slot_input_hook(store: Entry):  # noqa: ANN202
    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        store["input_size"] = tuple(args[0].shape[-2:])

    return hook


def _grid_hook(store: Entry):  # noqa: ANN202
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        store["grid_size"] = tuple(output.shape[-2:])  # PatchEmbed returns (B, C, gh, gw)

    return hook


def _finish_hook(maps: AttentionMaps):  # noqa: ANN202
    def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        maps.finish()

    return hook


def _swin_layout_hook(block: nn.Module):  # noqa: ANN202
    signature = inspect.signature(type(block).forward)

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        bound = signature.bind(module, *args, **kwargs).arguments
        store = module.attn._capture
        if store is not None:
            store["layout"] = (bound["window"], bound["shift"], tuple(bound["x"].shape[1:3]))  # x: (B, H, W, C)

    return hook


@contextmanager
def capture(model: nn.Module) -> Iterator[AttentionMaps]:
    """Record every attention block's map while the ``with`` body runs forwards of ``model``.

    Outputs are unchanged (bit-identical): blocks compute exactly what they compute otherwise and,
    in addition, what they record. Entries are dropped when the forward did not reach them.
    """
    from visattn.backbones.swin import SwinTransformerBlock
    from visattn.backbones.vit import VisionTransformer

    maps = AttentionMaps()
    assigned: list[nn.Module] = []
    handles: list[Any] = []

    def attach(module: nn.Module, store: Entry, key: str) -> None:
        if is_recording(module):
            raise BadValueError(f"{type(module).__name__} at {key!r} is already being captured; "
                             "capture() blocks over the same model cannot nest")
        start_recording(module, store)
        assigned.append(module)

    try:
        inside: set[int] = set()
        for name, module in model.named_modules():
            if isinstance(module, AttentionSlot) and module.block is not None:
                store = maps.setdefault(name, {})
                maps.slot_keys.add(name)
                for sub in module.block.modules():
                    inside.add(id(sub))
                    if can_record(sub):
                        attach(sub, store, name)
                handles.append(module.block.register_forward_pre_hook(_slot_input_hook(store)))
        for name, module in model.named_modules():
            if id(module) in inside:
                continue
            if can_record(module):
                attach(module, maps.setdefault(name, {}), name)
            if isinstance(module, VisionTransformer):
                key = _join(name, "rollout")
                handles.append(module.patch_embed.register_forward_hook(_grid_hook(maps.setdefault(key, {}))))
                maps.rollouts[key] = [_join(name, f"blocks.{i}.attn") for i in range(len(module.blocks))]
                maps.prefix_tokens[key] = module.num_prefix_tokens
            elif isinstance(module, SwinTransformerBlock):
                handles.append(module.register_forward_pre_hook(_swin_layout_hook(module), with_kwargs=True))
        handles.append(model.register_forward_hook(_finish_hook(maps)))
        yield maps
    finally:
        for module in assigned:
            stop_recording(module)
        for handle in handles:
            handle.remove()
    maps.finish()
    for key in [k for k, entry in maps.items() if not any(isinstance(v, torch.Tensor) for v in entry.values())]:
        del maps[key]
