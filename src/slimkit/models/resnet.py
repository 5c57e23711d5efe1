"""CIFAR ResNets: ResNet-20/32/56 (He et al. 2016) and ResNet-18, from one class and its options.

`block="basic"`: two 3x3 convs and one shortcut around both; `"bireal"`: a shortcut around every conv, as
the Bi-Real / BNN papers build ResNet-20. Shortcuts: `"A"` takes every other pixel and zero-pads the new
channels (no weights); `"avgpool"` averages 2x2 instead (ReCU); `"conv"` is a 1x1 conv plus BN. The BNN
papers' variants (hardtanh or PReLU, no stem activation, BN1d before the classifier, BN gamma at 1e-8) are
options, so the binarization recipes build them from these same models.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from slimkit.channel_rules import ZeroPadChannels, register_channel_rule
from slimkit.models.common import Activation, make_activation, scaled

BlockStyle = Literal["basic", "bireal"]
Shortcut = Literal["A", "avgpool", "conv"]


class ShortcutA(nn.Module):
    """Option-A shortcut: stride by slicing (or 2x2 average pooling), zero-pad the extra channels."""

    def __init__(self, in_planes: int, planes: int, stride: int, pool: bool = False):
        super().__init__()
        self.stride, self.pool = stride, pool
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = F.avg_pool2d(x, self.stride) if self.pool else x[:, :, :: self.stride, :: self.stride]
        if self.pad != (0, 0):
            x = F.pad(x, (0, 0, 0, 0, *self.pad))
        return x


def _set_pad(shortcut: ShortcutA, pad: tuple[int, int]) -> None:
    shortcut.pad = pad


# the channel graph keeps ShortcutA as one node whose padded channels are zeros, and surgery re-sizes them
register_channel_rule(ShortcutA, ZeroPadChannels(pads=lambda shortcut: shortcut.pad, resize=_set_pad))


def make_shortcut(kind: Shortcut, in_planes: int, planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if kind == "conv":
        return nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
    return ShortcutA(in_planes, planes, stride, pool=kind == "avgpool")


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, activation: Activation, shortcut: Shortcut = "A"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = make_activation(activation, planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = make_activation(activation, planes)
        self.shortcut = make_shortcut(shortcut, in_planes, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class BiRealBlock(BasicBlock):
    """Same layers as BasicBlock, but each conv has its own shortcut."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.act2(self.bn2(self.conv2(out)) + out)


class CifarResNet(nn.Module):
    """Stem conv, stages of blocks (the first of each later stage strides by 2), global pooling, linear."""

    def __init__(self, stages: Sequence[tuple[int, int]], in_channels: int = 3, num_classes: int = 10,
                 width: float = 1.0, block: BlockStyle = "basic", activation: Activation = "relu",
                 shortcut: Shortcut = "A", stem_activation: Activation | Literal["none"] | None = None,
                 head_bn: bool = False, bn_init: float | None = None):
        super().__init__()
        block_cls = {"basic": BasicBlock, "bireal": BiRealBlock}[block]
        widths = [scaled(w, width) for w, _ in stages]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stem = stem_activation or activation
        self.act1 = nn.Identity() if stem == "none" else make_activation(stem, widths[0])
        in_planes = widths[0]
        for index, ((_, count), planes) in enumerate(zip(stages, widths, strict=True), start=1):
            blocks = []
            for i in range(count):
                stride = 2 if index > 1 and i == 0 else 1
                blocks.append(block_cls(in_planes, planes, stride, activation, shortcut))
                in_planes = planes
            self.add_module(f"layer{index}", nn.Sequential(*blocks))
        self.num_stages = len(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head_bn = nn.BatchNorm1d(in_planes) if head_bn else nn.Identity()
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d) and bn_init is not None:
                nn.init.constant_(m.weight, bn_init)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        for index in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return self.fc(self.head_bn(self.flatten(self.pool(x))))


def cifar_resnet(depth: int, in_channels: int = 3, num_classes: int = 10, input_size: int = 32,
                 width: float = 1.0, block: BlockStyle = "basic", activation: Activation = "relu",
                 shortcut: Shortcut = "A", stem_activation: Activation | Literal["none"] | None = None,
                 head_bn: bool = False, bn_init: float | None = None) -> CifarResNet:
    """A 6n+2-layer CIFAR ResNet (16/32/64 channels); global pooling makes it independent of input_size."""
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, not {depth}")
    n = (depth - 2) // 6
    return CifarResNet([(16, n), (32, n), (64, n)], in_channels, num_classes, width, block, activation, shortcut,
                       stem_activation, head_bn, bn_init)


def resnet18(in_channels: int = 3, num_classes: int = 10, input_size: int = 32, width: float = 1.0,
             block: BlockStyle = "basic", activation: Activation = "relu", shortcut: Shortcut = "conv",
             stem_activation: Activation | Literal["none"] | None = None, head_bn: bool = False,
             bn_init: float | None = None) -> CifarResNet:
    """CIFAR ResNet-18: a 3x3 stride-1 stem, 64/128/256/512 channels in [2, 2, 2, 2] blocks, no max-pool."""
    return CifarResNet([(64, 2), (128, 2), (256, 2), (512, 2)], in_channels, num_classes, width, block, activation,
                       shortcut, stem_activation, head_bn, bn_init)


resnet20 = partial(cifar_resnet, 20)
resnet32 = partial(cifar_resnet, 32)
resnet56 = partial(cifar_resnet, 56)
