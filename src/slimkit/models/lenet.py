"""A LeNet-style CNN (Caffe's 20-50-500 LeNet with same-padding), sized by the input."""

from __future__ import annotations

from torch import Tensor, nn

from slimkit.models.common import scaled


class LeNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: float = 1.0):
        super().__init__()

        c1, c2, hidden = scaled(20, width), scaled(50, width), scaled(500, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = input_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def lenet(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: float = 1.0) -> LeNet:
    return LeNet(in_channels, num_classes, input_size, width)
