"""The model zoo. Every builder takes in_channels, num_classes, input_size and width, so each model runs
on 1x8x8 digits, 1x28x28 (Fashion-)MNIST and 3x32x32 CIFAR alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from torch import nn

from slimkit.models.lenet import lenet
from slimkit.models.mlp import mlp
from slimkit.models.resnet import resnet18, resnet20, resnet32, resnet56
from slimkit.models.vgg import vgg_small

if TYPE_CHECKING:
    from slimkit.recipe import ModelConfig

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet": lenet,
    "resnet18": resnet18,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "vgg_small": vgg_small,
}


def build_model(config: ModelConfig, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    """Build a zoo model; explicit values in `config` win over the data set's shape."""
    return MODELS[config.name](
        in_channels=config.in_channels or in_channels,
        num_classes=config.num_classes or num_classes,
        input_size=config.input_size or input_size,
        width=config.width,
        **config.options,
    )


__all__ = ["MODELS", "build_model", "lenet", "mlp", "resnet18", "resnet20", "resnet32", "resnet56", "vgg_small"]
