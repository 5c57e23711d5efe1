"""Binary conv and linear layers: ordinary modules that take a weight and an input binarizer (as Larq's
`kernel_quantizer`/`input_quantizer`). Every binarization method is a pair of binarizers plus a schedule."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimkit.binary.binarizers import WeightBinarizer
from slimkit.errors import UnsupportedLayerError
from slimkit.layers import adapter_of, known_adapter, layer_bias, layer_tensor


class _BinaryMixin:
    """Shared by the binary layers: the two binarizers, and the forward around the float op."""

    weight: Tensor  # the float layer's, as nn.Conv2d and nn.Linear declare it

    def __init__(self, *args, weight_binarizer: WeightBinarizer, input_binarizer: nn.Module, **kwargs):
        super().__init__(*args, **kwargs)  # the float layer (nn.Conv2d or nn.Linear), next in the MRO
        self.weight_binarizer = weight_binarizer
        self.input_binarizer = input_binarizer

    channel_dim = 1  # where outputs hold their channels: dim 1 for convs, the last dim for linears

    def binary_forward(self, x: Tensor, op: Callable[[Tensor, Tensor], Tensor], bias: Tensor | None) -> Tensor:
        """op(binarized input, binary weights), then the output scale and the layer's `bias` per output channel.
        The weight binarizer runs in fp32 under autocast too: its rotations, SVDs and quantiles are weight
        statistics."""
        with torch.autocast(x.device.type, enabled=False):
            signs, scale = self.weight_binarizer(self.weight)
        y = op(self.input_binarizer(x), signs)
        view = (-1,) if self.channel_dim == -1 else (1, -1) + (1,) * (y.ndim - 2)
        if scale is not None:
            y = y * scale.reshape(view)
        if bias is not None:
            y = y + bias.reshape(view)
        return y


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return self.binary_forward(x, lambda a, w: self._conv_forward(a, w, None), self.bias)


class BinaryLinear(_BinaryMixin, nn.Linear):
    """Inputs of any rank whose last dimension is the features, as nn.Linear takes them."""

    channel_dim = -1

    def forward(self, x: Tensor) -> Tensor:
        return self.binary_forward(x, F.linear, self.bias)


def binarize_module(module: nn.Module, weight_binarizer: Callable[[Tensor], WeightBinarizer],
                    input_binarizer: nn.Module) -> BinaryConv2d | BinaryLinear:
    """A binary copy of a float conv or linear layer, with the same latent weights and bias. A registered
    layer type qualifies when its adapter promises it is a linear map (HF's Conv1D is); its weight is
    copied in the (out, in) layout."""
    adapter = adapter_of(module)
    if not isinstance(module, nn.Conv2d) and (adapter is None or not adapter.linear_map):
        raise UnsupportedLayerError(f"binarization replaces layers by binary nn.Conv2d/nn.Linear equivalents, and "
                                    f"{type(module).__qualname__} is not registered as a linear map "
                                    f"(slimkit.layers.register_layer(..., LayerAdapter('linear', linear_map=True)))")
    weight = known_adapter(module).canonical(layer_tensor(module).detach())
    with torch.device(weight.device):  # the binary layer and its binarizer's state beside the weight, on a GPU too
        wb = weight_binarizer(weight)
        if isinstance(module, nn.Conv2d):
            new: BinaryConv2d | BinaryLinear = BinaryConv2d(
                module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                padding=module.padding, dilation=module.dilation, groups=module.groups, bias=module.bias is not None,
                padding_mode=module.padding_mode, weight_binarizer=wb, input_binarizer=input_binarizer)
        else:
            new = BinaryLinear(weight.shape[1], weight.shape[0], bias=module.bias is not None,
                               weight_binarizer=wb, input_binarizer=input_binarizer)
    new.weight.data.copy_(weight)
    bias = layer_bias(module)
    if new.bias is not None and bias is not None:
        new.bias.data.copy_(bias.data)
    return new.train(module.training)
