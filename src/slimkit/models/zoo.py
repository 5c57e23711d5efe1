"""The zoo by name. Every builder takes in_channels, num_classes, input_size and width."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from slimkit.models.lenet import lenet
from slimkit.models.mlp import mlp
from slimkit.models.resnet import resnet18, resnet20, resnet32, resnet56
from slimkit.models.vgg import vgg_small

MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": mlp,
    "lenet": lenet,
    "resnet18": resnet18,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "vgg_small": vgg_small,
}
