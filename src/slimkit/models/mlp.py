"""LeNet-300-100 style multi-layer perceptron."""

from __future__ import annotations

from torch import nn

from slimkit.models.common import scaled


def mlp(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: float = 1.0,
        hidden: tuple[int, ...] = (300, 100)) -> nn.Sequential:

    layers: list[nn.Module] = [nn.Flatten()]
    features = in_channels * input_size * input_size
    for h in hidden:
        layers += [nn.Linear(features, scaled(h, width)), nn.ReLU(inplace=True)]
        features = scaled(h, width)
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)
