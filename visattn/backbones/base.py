"""What every backbone reports: its stages (channels, stride) and a split of forward into features and head."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from visattn.errors import BadValueError


@dataclass(frozen=True)
class StageInfo:
    """One stage output: the module that produces it, its channel count and its stride to the input.

    ``slots``: where the stage's slots live when that is not under ``name`` (a timm model's ``stages.I``), for
    grouping attention maps by stage; empty means under ``name``.
    """

    name: str
    channels: int
    stride: int
    slots: str = ""


class Backbone(nn.Module):
    """Base class of registered backbones.

    Subclasses set ``stage_info`` and ``classifier_name`` (the module path of the final classifier,
    re-initialised when a pretrained file has another class count) and implement
    ``forward_stages`` (one (B, C, H, W) map per stage) and ``forward_features`` / ``forward_head``.
    """

    stage_info: list[StageInfo]
    classifier_name: str
    num_classes: int

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @classmethod
    def convert_state_dict(cls, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a timm/torchvision state dict of the same architecture to this module's key names."""
        return dict(state_dict)

    def adapt_pretrained(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adapt converted pretrained tensors to this instance (e.g. ViT resamples ``pos_embed``); default: none."""
        return state_dict

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if this backbone cannot take an image of this size."""
        if height < 1 or width < 1:
            raise BadValueError(f"{type(self).__name__}: image size must be positive, got {height}x{width}")
