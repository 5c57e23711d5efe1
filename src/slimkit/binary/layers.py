"""Binary conv and linear layers: ordinary modules that take a weight and an input binarizer (as Larq's
`kernel_quantizer`/`input_quantizer`). Every binarization method is a pair of binarizers plus a schedule."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from slimkit.binary.binarizers import WeightBinarizer


class _BinaryMixin:
    """Shared by the binary layers: the two binarizers, and the forward around the float op."""

    weight: nn.Parameter
    bias: nn.Parameter | None

    def __init__(self, *args, weight_binarizer: WeightBinarizer, input_binarizer: nn.Module, **kwargs):
        super().__init__(*args, **kwargs)  # the float layer (nn.Conv2d or nn.Linear), next in the MRO
        self.weight_binarizer = weight_binarizer
        self.input_binarizer = input_binarizer

    def binary_forward(self, x: Tensor, op: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        """op(binarized input, binary weights), then the output scale and bias per output channel."""
        signs, scale = self.weight_binarizer(self.weight)
        y = op(self.input_binarizer(x), signs)
        view = (1, -1) + (1,) * (y.ndim - 2)
        if scale is not None:
            y = y * scale.reshape(view)
        if self.bias is not None:
            y = y + self.bias.reshape(view)
        return y


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self.binary_forward(x, lambda a, w: self._conv_forward(a, w, None))


class BinaryLinear(_BinaryMixin, nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return self.binary_forward(x, F.linear)


def binarize_module(module: nn.Conv2d | nn.Linear, weight_binarizer: Callable[[Tensor], WeightBinarizer],
                    input_binarizer: nn.Module) -> BinaryConv2d | BinaryLinear:
    """A binary copy of a float conv or linear layer, with the same latent weights and bias."""
    wb = weight_binarizer(module.weight.detach())
    if isinstance(module, nn.Conv2d):
        new: BinaryConv2d | BinaryLinear = BinaryConv2d(
            module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
            padding=module.padding, dilation=module.dilation, groups=module.groups, bias=module.bias is not None,
            padding_mode=module.padding_mode, weight_binarizer=wb, input_binarizer=input_binarizer)
    else:
        new = BinaryLinear(module.in_features, module.out_features, bias=module.bias is not None,
                           weight_binarizer=wb, input_binarizer=input_binarizer)
    new.weight.data.copy_(module.weight.data)
    if module.bias is not None:
        new.bias.data.copy_(module.bias.data)
    return new.train(module.training)
