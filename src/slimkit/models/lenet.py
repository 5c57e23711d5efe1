"""A LeNet-style CNN (Caffe's 20-50-500 LeNet with same-padding), sized by the input. `kernel_size=3` gives
the 3x3 convolutions that pattern sparsity (PatDNN) is defined on."""

from __future__ import annotations

from torch import Tensor, nn

from slimkit.models.common import scaled


class LeNet(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: float = 1.0,
                 kernel_size: int = 5):
        super().__init__()

        c1, c2, hidden = scaled(20, width), scaled(50, width), scaled(500, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size, padding=kernel_size // 2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size, padding=kernel_size // 2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        side = input_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c2 * side * side, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def lenet(in_channels: int = 1, num_classes: int = 10, input_size: int = 28, width: float = 1.0,
          kernel_size: int = 5) -> LeNet:
    if kernel_size % 2 != 1 or kernel_size < 1:
        raise ValueError(f"model.options.kernel_size must be odd and positive (same padding), got {kernel_size}")
    return LeNet(in_channels, num_classes, input_size, width, kernel_size)
