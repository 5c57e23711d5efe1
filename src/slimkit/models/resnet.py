"""CIFAR ResNet-20/32/56 (He et al. 2016) with the option-A shortcut, in two block styles.

`basic`: two 3x3 convs and one shortcut around both. `bireal`: a shortcut around every conv, as the
Bi-Real / BNN papers build ResNet-20. Option A downsamples by taking every other pixel and zero-pads
the new channels, so shortcuts carry no weights.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from slimkit.models.common import Activation, make_activation, scaled

BlockStyle = Literal["basic", "bireal"]


class ShortcutA(nn.Module):
    """Option-A shortcut: stride by slicing, zero-pad the extra channels on both sides."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad != (0, 0):
            x = F.pad(x, (0, 0, 0, 0, *self.pad))
        return x


def _shortcut(in_planes: int, planes: int, stride: int) -> nn.Module:
    return ShortcutA(in_planes, planes, stride) if stride != 1 or in_planes != planes else nn.Identity()


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, activation: Activation):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = make_activation(activation, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = make_activation(activation, planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class BiRealBlock(BasicBlock):
    """Same layers as BasicBlock, but each conv has its own shortcut."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.act2(self.bn2(self.conv2(out)) + out)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10, width: float = 1.0,
                 block: BlockStyle = "basic", activation: Activation = "relu"):
        super().__init__()

        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, not {depth}")
        per_stage = (depth - 2) // 6
        block_cls = {"basic": BasicBlock, "bireal": BiRealBlock}[block]
        widths = [scaled(16, width), scaled(32, width), scaled(64, width)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = make_activation(activation, widths[0])
        in_planes = widths[0]
        stages = []
        for stage, planes in enumerate(widths):
            blocks = []
            for i in range(per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(block_cls(in_planes, planes, stride, activation))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def cifar_resnet(depth: int, in_channels: int = 3, num_classes: int = 10, input_size: int = 32,
                 width: float = 1.0, block: BlockStyle = "basic", activation: Activation = "relu") -> CifarResNet:
    """A 6n+2-layer CIFAR ResNet; global pooling makes it independent of input_size."""
    return CifarResNet(depth, in_channels, num_classes, width, block, activation)


resnet20 = partial(cifar_resnet, 20)
resnet32 = partial(cifar_resnet, 32)
resnet56 = partial(cifar_resnet, 56)
