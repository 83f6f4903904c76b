"""ResNet v1.5 (He et al., 2016; stride in the 3x3 conv), named as torchvision and timm name it.

Slots: ``input`` (on the image), ``layerI.J.slot`` in every block on the residual branch after the
last BatchNorm and before the shortcut add (role "block", the default), ``layerI.slot`` after each
stage (role "stage").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from visattn.backbones.base import Backbone, StageInfo
from visattn.layers import AttentionSlot, require
from visattn.registry import BACKBONES


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.slot = AttentionSlot(out_channels, role="block")
        self.downsample = downsample

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.slot(self.bn2(self.conv2(out)))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, downsample: nn.Module | None) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.slot = AttentionSlot(out_channels, role="block")
        self.downsample = downsample

    def last_norm(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.slot(self.bn3(self.conv3(out)))
        return self.relu(out + shortcut)


class ResNet(Backbone):
    classifier_name = "fc"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        base_width: int = 64,
        drop_rate: float = 0.0,
        zero_init_last: bool = True,
    ) -> None:
        super().__init__()
        require(num_classes >= 0, "resnet", "num_classes", ">= 0", num_classes)
        require(base_width >= 1, "resnet", "base_width", ">= 1", base_width)
        self.num_classes = num_classes
        self.input = AttentionSlot(in_chans, role="input")
        self.conv1 = nn.Conv2d(in_chans, base_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        channels = base_width
        self.stage_info = []
        for index, depth in enumerate(layers):
            planes = base_width * 2**index
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(depth):
                block_stride = stride if block_index == 0 else 1
                downsample = None
                if block_stride != 1 or channels != planes * block.expansion:
                    downsample = nn.Sequential(
                        nn.Conv2d(channels, planes * block.expansion, 1, stride=block_stride, bias=False),
                        nn.BatchNorm2d(planes * block.expansion),
                    )
                blocks.append(block(channels, planes, block_stride, downsample))
                channels = planes * block.expansion
            stage = nn.Sequential(*blocks)
            stage.add_module("slot", AttentionSlot(channels, role="stage"))  # runs after the stage's blocks
            self.add_module(f"layer{index + 1}", stage)
            self.stage_info.append(StageInfo(f"layer{index + 1}", channels, 4 * 2**index))
        self.num_features = channels
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_last:
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_norm().weight)

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(self.input(x)))))

    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, info.name) for info in self.stage_info]

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outputs = []
        for stage in self.stages():
            x = stage(x)
            outputs.append(x)
        return outputs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages():
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.global_pool(x).flatten(1)))


def _resnet_builder(name: str, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int]) -> None:
    def build(
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        base_width: int = 64,
        drop_rate: float = 0.0,
        zero_init_last: bool = True,
    ) -> ResNet:
        return ResNet(block, layers, num_classes=num_classes, in_chans=in_chans, base_width=base_width,
                      drop_rate=drop_rate, zero_init_last=zero_init_last)

    build.__name__ = name
    build.__doc__ = f"{name}: {block.__name__} blocks, stage depths {list(layers)}."
    BACKBONES.register(name)(build)


_resnet_builder("resnet18", BasicBlock, (2, 2, 2, 2))
_resnet_builder("resnet34", BasicBlock, (3, 4, 6, 3))
_resnet_builder("resnet50", Bottleneck, (3, 4, 6, 3))
_resnet_builder("resnet101", Bottleneck, (3, 4, 23, 3))
