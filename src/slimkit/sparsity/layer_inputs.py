"""A layer's input as rows of the features its weight multiplies: what the one-shot criteria measure.

A linear map (nn.Linear, HF's Conv1D, any registered `linear_map` layer) multiplies the last dimension of its
input, so every token or sample is one row of `in` features. A Conv2d multiplies receptive fields: its input,
padded as the conv pads it (any padding mode), is unfolded (F.unfold) into one row per output position of
in·kh·kw features, in the order of weight.flatten(1) (input channel, then kernel row, then kernel column).
Either way the layer computes rows @ W.flatten(1).T, so a criterion written for a matrix serves both.

`layout_order` is the permutation that puts the features of one kernel position together (kernel row, kernel
column, then input channel): the order in which N:M groups and blocks of input channels are consecutive.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slimkit.layers import adapter_of, canonical_weight, conv_pair


def feature_issue(module: nn.Module) -> str | None:
    """Why the one-shot criteria cannot read `module`'s inputs as feature rows, or None when they can."""
    adapter = adapter_of(module)
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return (f"a grouped Conv2d (groups={module.groups}) multiplies each input channel by a few filters "
                    f"only, which one input Hessian per layer cannot describe")
        return None
    if adapter is not None and adapter.kind == "linear" and adapter.linear_map:
        return None
    return (f"{type(module).__name__} is neither a Conv2d nor a layer registered as a linear map "
            f"(x @ W.T on the last dimension), so slimkit cannot tell which inputs its weights multiply")


def feature_count(module: nn.Module) -> int:
    """Features per row: in (linear) or in·kh·kw (conv)."""
    weight = canonical_weight(module)
    return weight[0].numel()


def feature_key(module: nn.Module) -> Hashable:
    """Equal for two layers that turn one input into the same feature rows (so they can share statistics)."""
    if isinstance(module, nn.Conv2d):
        return ("conv", module.in_channels, conv_pair(module.kernel_size), conv_pair(module.stride),
                str(module.padding), conv_pair(module.dilation), module.padding_mode)
    return ("linear", feature_count(module))


def feature_rows(module: nn.Module, x: Tensor) -> Tensor:
    """The input `x` of `module` as float rows (rows, features), the rows the layer multiplies by its weight."""
    if isinstance(module, nn.Conv2d):
        padded = F.pad(x.float(), _padding(module), mode="constant" if module.padding_mode == "zeros"
                       else module.padding_mode)
        columns = F.unfold(padded, conv_pair(module.kernel_size), dilation=conv_pair(module.dilation),
                           stride=conv_pair(module.stride))  # (batch, in*kh*kw, positions)
        return columns.transpose(1, 2).reshape(-1, columns.shape[1])
    return x.reshape(-1, x.shape[-1]).float()


def _padding(conv: nn.Conv2d) -> tuple[int, ...]:
    """F.pad's (left, right, top, bottom) as the conv's forward pads: its `padding` with zeros (torch passes that
    to the convolution itself), else the list torch pads by ('same', or another padding mode)."""
    if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        height, width = conv_pair(conv.padding)
        return (width, width, height, height)
    return tuple(conv._reversed_padding_repeated_twice)


def layout_order(weight: Tensor) -> Tensor:
    """Indices that reorder the columns of weight.flatten(1) (canonical (out, in, kh, kw)) so that the input
    channels of each kernel position are consecutive; the identity for a linear weight."""
    if weight.dim() == 2:
        return torch.arange(weight.shape[1], device=weight.device)
    inputs, positions = weight.shape[1], weight[0, 0].numel()
    return torch.arange(inputs * positions, device=weight.device).view(inputs, positions).t().reshape(-1)
