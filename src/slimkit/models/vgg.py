"""VGG-small (the BNN papers' CIFAR VGG): six 3x3 convs, pooling before BN, one linear head."""

from __future__ import annotations

from torch import Tensor, nn

from slimkit.models.common import Activation, make_activation, scaled


class VGGSmall(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, width: float = 1.0,
                 activation: Activation = "relu"):
        super().__init__()

        c128, c256, c512 = scaled(128, width), scaled(256, width), scaled(512, width)
        self.conv0 = nn.Conv2d(in_channels, c128, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(c128)
        self.act0 = make_activation(activation, c128)
        # (in, out, pool after conv) for conv1..conv5; each is followed by [pool], BN, activation.
        plan = [(c128, c128, True), (c128, c256, False), (c256, c256, True), (c256, c512, False), (c512, c512, True)]
        self.body = nn.Sequential()
        for i, (cin, cout, pool) in enumerate(plan, start=1):
            self.body.add_module(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False))
            if pool:
                self.body.add_module(f"pool{i}", nn.MaxPool2d(2))
            self.body.add_module(f"bn{i}", nn.BatchNorm2d(cout))
            self.body.add_module(f"act{i}", make_activation(activation, cout))
        side = input_size // 8
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c512 * side * side, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act0(self.bn0(self.conv0(x)))
        return self.fc(self.flatten(self.body(x)))


def vgg_small(in_channels: int = 3, num_classes: int = 10, input_size: int = 32, width: float = 1.0,
              activation: Activation = "relu") -> VGGSmall:
    if input_size < 8:
        raise ValueError(f"vgg_small pools three times and needs input_size >= 8, not {input_size}")
    return VGGSmall(in_channels, num_classes, input_size, width, activation)
