"""Layers in an engine operator's form. Each Engine* module is built from a trained layer (a binary conv, a
pruned conv or linear layer, a conv or linear layer of the int8 graph), holds its operator's constants as
buffers, carries the epilogue the fusion passes fuse into it (BatchNorm, residual add, clamp, quantizers)
and calls its operator's Function, so the model exports with one custom node per layer.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimkit.binary.binarizers import ActivationBinarizer
from slimkit.binary.functions import Zero
from slimkit.binary.layers import BinaryConv2d
from slimkit.errors import SlimkitError
from slimkit.folding import batchnorm_affine
from slimkit.layers import canonical_weight
from slimkit.quant.int8_graph import FoldedLayer
from slimkit.quant.quantizers import UniformQuantizer
from slimkit.runtime.engine.operators import (
    DOMAIN,
    BinaryConv2dFunction,
    Grid,
    QuantSparseConv2dFunction,
    SparseConv2dFunction,
    SparseLinearFunction,
)
from slimkit.runtime.layouts import GROUP, conv_by_output, linear_by_output_row


def _pair(value: int | tuple[int, ...]) -> tuple[int, ...]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _square(layer: nn.Conv2d, operator_name: str) -> tuple[int, int]:
    """(stride, pad) of a conv the operators take: square stride, symmetric zero padding, ungrouped, undilated."""
    stride, padding = layer.stride, layer.padding
    if (layer.groups != 1 or layer.dilation != (1, 1) or layer.padding_mode != "zeros"
            or isinstance(padding, str) or stride[0] != stride[1] or padding[0] != padding[1]):
        raise SlimkitError(f"slimkit's {operator_name} takes square-stride, symmetric zero-padded, ungrouped, "
                           f"undilated convs; this one has stride {stride}, padding {padding}, groups "
                           f"{layer.groups}, dilation {layer.dilation}")
    return stride[0], padding[0]


class EngineConv(nn.Module):
    """A conv in an engine operator's form, with the epilogue the exporter fuses into it: a BatchNorm that
    alone reads it (`fuse_batchnorm`), then a residual add, then a ReLU/hardtanh clamp."""

    operator: ClassVar[str]  # the node it exports as, slimkit::<operator>

    def __init__(self) -> None:
        super().__init__()
        self.residual = False
        self.bounds: tuple[float, float] | None = None
        self.fused: list[str] = []
        self.layer = ""  # the model layer it stands for (form sets it): its node's name in OpenVINO

    def fuse_batchnorm(self, bn: nn.BatchNorm2d, name: str) -> None:
        k, c = batchnorm_affine(bn)
        self.fold(k.double(), c.double())
        self.fused.append(name)

    def fold(self, k: Tensor, c: Tensor) -> None:
        """Apply y -> y * k + c per output channel to the operator's constants."""
        raise NotImplementedError

    def fuse_residual(self, name: str) -> None:
        self.residual = True
        self.fused.append(name)

    def fuse_clamp(self, low: float, high: float, name: str) -> None:
        self.bounds = (low, high)
        self.fused.append(name)

    def fuse_pool(self, module: nn.Module, name: str) -> bool:
        """Take a 2x2 max pool of stride 2 of the output into the epilogue, if this operator can (binary convs)."""
        return False

    def fuse_input(self, module: nn.Module, name: str) -> bool:
        """Learn what the module producing the input does (its quantizer's grid), if this operator needs it;
        float operators do not."""
        return False

    def fuse_quantizer(self, module: nn.Module, name: str) -> bool:
        """Take a quantizer of the output into the epilogue, if this operator can; float operators cannot."""
        return False


class EngineBinaryConv2d(EngineConv):
    """A BinaryConv2d as slimkit::BinaryConv2d: the input binarizer's normalisation (real ONNX ops), then the
    custom node with the weight binarizer's signs and the output scale and shift frozen as constants."""

    operator = f"{DOMAIN}::BinaryConv2d"
    signs: Tensor
    scale: Tensor
    shift: Tensor
    post_scale: Tensor
    post_shift: Tensor

    def __init__(self, layer: BinaryConv2d):
        super().__init__()
        self.stride, self.pad = _square(layer, "binary conv")
        binarizer = layer.input_binarizer
        if not isinstance(binarizer, ActivationBinarizer):  # nn.Identity: the layer binarizes weights only
            raise SlimkitError("a weights-only binary conv has real-valued inputs; it has no engine binary form")
        with torch.no_grad():
            signs, scale = layer.weight_binarizer.eval()(layer.weight)
        if not bool((signs.abs() == 1).all()):
            raise SlimkitError("some binary weights are 0 (an exactly-zero latent weight, or {0, 1} codes); "
                               "the engine's binary conv needs +-1 weights")
        out = signs.shape[0]
        self.input_binarizer = binarizer
        self.register_buffer("signs", signs.detach().float().contiguous().clone())
        self.register_buffer("scale", (torch.ones(out) if scale is None else scale.detach().reshape(-1).expand(out))
                             .float().contiguous().clone())
        self.register_buffer("shift", (torch.zeros(out) if layer.bias is None else layer.bias.detach()).float().clone())
        # a fused max pool's affine after it (a BatchNorm there folds into it); identity, and unused, without one
        self.register_buffer("post_scale", torch.ones(out))
        self.register_buffer("post_shift", torch.zeros(out))
        self.pool = False
        self.pack: Zero | None = None  # set by fusion.link_operators: also output the sign bits, under this convention
        self.linked = False  # set by fusion.link_operators: the input is the previous binary layer's sign bits

    def fold(self, k: Tensor, c: Tensor) -> None:
        """In float64, rounded once: the window sums stay exact, only the epilogue's rounding changes. After a
        fused pool, into the affine after it."""
        if self.pool:
            self.post_scale = (self.post_scale.double() * k).float()
            self.post_shift = (self.post_shift.double() * k + c).float()
        else:
            self.scale = (self.scale.double() * k).float()
            self.shift = (self.shift.double() * k + c).float()

    def fuse_pool(self, module: nn.Module, name: str) -> bool:
        """nn.MaxPool2d(2) (2x2 windows, stride 2, no padding or dilation, floor): the operator keeps each
        window's largest conv output exactly (see slimkit::BinaryConv2d), 4x fewer outputs to write and no
        OpenVINO pool (with its layout reorders) between two operators."""
        if (self.pool or self.residual or self.bounds is not None or type(module) is not nn.MaxPool2d
                or _pair(module.kernel_size) != (2, 2) or _pair(module.stride) != (2, 2)
                or _pair(module.padding) != (0, 0) or _pair(module.dilation) != (1, 1) or module.ceil_mode
                or module.return_indices):
            return False
        self.pool = True
        self.fused.append(name)
        return True

    def forward(self, x: Tensor, *residual: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x = x if self.linked else self.input_binarizer.normalized(x)
        return BinaryConv2dFunction.apply(x, self.signs, self.scale, self.shift, self.post_scale, self.post_shift,
                                         self.stride, self.pad, self.pool, self.input_binarizer.zero, self.bounds,
                                         self.layer, self.pack, self.linked, *residual)


class EngineSparseConv2d(EngineConv):
    """A pruned float conv as slimkit::SparseConv2d: its non-zeros in CSR over output channels (each
    channel's entries padded to a multiple of 4 with zeros), the bias as the shift."""

    operator = f"{DOMAIN}::SparseConv2d"
    value: Tensor
    channel: Tensor
    tap: Tensor
    ptr: Tensor
    shift: Tensor

    def __init__(self, layer: nn.Conv2d):
        super().__init__()
        self.stride, self.pad = _square(layer, "sparse conv")
        weight = layer.weight.detach().float()
        ptr, channel, tap, value = conv_by_output(weight.numpy())
        if value.size == 0:  # an all-zero layer: one group of zero entries, so no constant is empty
            ptr, channel, tap, value = (ptr + GROUP * (np.arange(ptr.size) > 0), np.zeros(GROUP, np.int32),
                                        np.zeros(GROUP, np.int32), np.zeros(GROUP, np.float32))
        self.shape = tuple(weight.shape)
        self.register_buffer("value", torch.from_numpy(value))
        self.register_buffer("channel", torch.from_numpy(channel))
        self.register_buffer("tap", torch.from_numpy(tap))
        self.register_buffer("ptr", torch.from_numpy(ptr))
        self.register_buffer("shift", (torch.zeros(weight.shape[0]) if layer.bias is None
                                       else layer.bias.detach().float().clone()))

    def fold(self, k: Tensor, c: Tensor) -> None:
        rows = torch.repeat_interleave(torch.arange(self.shape[0]), self.ptr.diff())
        self.value = (self.value.double() * k[rows]).float()
        self.shift = (self.shift.double() * k + c).float()

    def forward(self, x: Tensor, *residual: Tensor) -> Tensor:
        return SparseConv2dFunction.apply(x, self.value, self.channel, self.tap, self.ptr, self.shift, self.shape,
                                         self.stride, self.pad, self.bounds, self.layer, *residual)


def _grid(quantizer: nn.Module) -> Grid | None:
    """(step, qmin, qmax) of an eval-mode per-tensor 8-bit UniformQuantizer, else None."""
    if (not isinstance(quantizer, UniformQuantizer) or quantizer.training or quantizer.channels != 1
            or quantizer.bits != 8):
        return None
    return float(quantizer.step.detach().reshape(())), quantizer.qmin, quantizer.qmax


class EngineQuantSparseConv2d(EngineConv):
    """A conv of the int8 graph (int8_graph's FoldedLayer) as slimkit::QuantSparseConv2d: its integer weights
    kept in blocks of 4 input channels (a block with any non-zero is kept whole), the quantizer of its input
    taken into the node (`fuse_input`), and the quantizers around its epilogue fused like the float ops."""

    operator = f"{DOMAIN}::QuantSparseConv2d"
    weight: Tensor
    group: Tensor
    tap: Tensor
    ptr: Tensor
    weight_step: Tensor
    bias: Tensor
    links_integers = True  # may hand its integers to the next operator, or read the previous one's

    def __init__(self, layer: FoldedLayer):
        super().__init__()
        conv = layer.layer
        self.stride, self.pad = self.geometry(conv)
        step = layer.step.detach().float()
        weight = conv.weight.detach().float()
        weight = weight.reshape(*weight.shape, *[1] * (4 - weight.dim()))  # a linear's (out, in) as a 1x1 conv
        integers = torch.fake_quantize_per_channel_affine(weight, step, layer.zero, 0, -128, 127)
        integers = torch.round(integers / step.reshape(-1, 1, 1, 1)).to(torch.int8)
        out, channels, kernel_h, kernel_w = integers.shape
        groups = (channels + 3) // 4
        blocks = F.pad(integers, (0, 0, 0, 0, 0, groups * 4 - channels)).reshape(out, groups, 4, kernel_h * kernel_w)
        rows, group, tap = torch.nonzero(blocks.abs().sum(2), as_tuple=True)  # o-major: CSR order
        if rows.numel() == 0:  # an all-zero layer: one zero block, so no constant is empty
            rows = group = tap = torch.zeros(1, dtype=torch.long)
        self.shape = (out, channels, kernel_h, kernel_w)
        self.register_buffer("weight", blocks[rows, group, :, tap].reshape(-1).contiguous())
        self.register_buffer("group", group.to(torch.int32))
        self.register_buffer("tap", tap.to(torch.int32))
        self.register_buffer("ptr", torch.cat([torch.zeros(1, dtype=torch.int64),
                                               torch.bincount(rows, minlength=out).cumsum(0)]))
        self.register_buffer("weight_step", step.clone())
        self.register_buffer("bias", torch.zeros(out) if conv.bias is None else conv.bias.detach().float().clone())
        self.grids: list[Grid | None] = [None, None, None]  # input, pre (before the residual), post
        self.link: Grid | None = None  # set by fusion.link_operators: also output the integers on this last grid
        self.linked = False  # set by fusion.link_operators: the input is the previous int8 layer's integers
        self.float_output = True  # set by fusion.link_operators: False when every reader takes the integers

    def geometry(self, conv: nn.Conv2d | nn.Linear) -> tuple[int, int]:
        """(stride, pad) of the conv."""
        if not isinstance(conv, nn.Conv2d):
            raise SlimkitError("a quantized linear layer's engine form is EngineQuantSparseLinear")
        return _square(conv, "quantized sparse conv")

    def fuse_input(self, quantizer: nn.Module, name: str) -> bool:
        """Round the input onto `quantizer`'s grid (per-tensor 8-bit) in the node: the integers it multiplies."""
        if (grid := _grid(quantizer)) is None:
            return False
        self.grids[0] = grid
        self.fused.append(name)
        return True

    def fuse_quantizer(self, quantizer: nn.Module, name: str) -> bool:
        """The quantizer of the conv's output (pre: nothing fused after it yet) or of the epilogue's (post)."""
        slot = 1 if not self.residual and self.bounds is None and self.grids[1] is None else 2
        if (grid := _grid(quantizer)) is None or self.grids[slot] is not None:
            return False
        self.grids[slot] = grid
        self.fused.append(name)
        return True

    def last_grid(self) -> Grid | None:
        """The grid the output is on: the quantizer after the epilogue, or the one before a residual add when
        nothing follows it; None when the output is not on one grid."""
        if self.grids[2] is not None:
            return self.grids[2]
        return self.grids[1] if not self.residual and self.bounds is None else None

    def forward(self, x: Tensor, *residual: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.grids[0] is None:
            raise SlimkitError("a quantized sparse conv's input has no per-tensor 8-bit quantizer to fuse")
        scale = (self.weight_step * self.grids[0][0]).float()
        return QuantSparseConv2dFunction.apply(x, self.weight, self.group, self.tap, self.ptr, scale, self.bias,
                                              self.shape, self.stride, self.pad, tuple(self.grids), self.bounds,
                                              self.layer, self.link, self.linked, self.float_output, *residual)


class EngineQuantSparseLinear(EngineQuantSparseConv2d):
    """A linear layer of the int8 graph (a FoldedLayer around nn.Linear) as slimkit::QuantSparseConv2d: x W^T
    is a 1x1 conv over a 1 x N image whose N positions are the rows of x, so a batch fills the operator's tiles
    of positions as an image's pixels do. Its input and output are floats (no integer links)."""

    links_integers = False

    def geometry(self, conv: nn.Conv2d | nn.Linear) -> tuple[int, int]:
        return 1, 0

    def forward(self, x: Tensor, *residual: Tensor) -> Tensor:
        def as_image(t: Tensor) -> Tensor:  # (..., features) -> (1, features, 1, rows)
            return t.reshape(-1, t.shape[-1]).t().unsqueeze(0).unsqueeze(2)

        y = super().forward(as_image(x), *(as_image(r) for r in residual))
        if not isinstance(y, Tensor):  # links_integers is False: no link is set, so the float output alone
            raise SlimkitError("a quantized linear layer's engine form hands no integers to the next layer")
        # -1 for the batch: a traced size would be baked into the export, which must run at any batch size
        return y.squeeze(2).squeeze(0).t().reshape(-1, *x.shape[1:-1], self.shape[0])


class EngineSparseLinear(EngineConv):
    """A pruned linear layer (or a registered linear map, such as HF's Conv1D) as slimkit::SparseLinear: its
    non-zeros in CSR over output features, the bias as the shift."""

    operator = f"{DOMAIN}::SparseLinear"
    value: Tensor
    column: Tensor
    ptr: Tensor
    shift: Tensor

    def __init__(self, layer: nn.Module):
        super().__init__()
        weight = canonical_weight(layer).detach().float()  # (out, in), also for HF's (in, out) Conv1D
        ptr, column, value = linear_by_output_row(weight.numpy())
        if value.size == 0:  # an all-zero layer: one zero entry, so no constant is empty
            ptr, column, value = ptr + (np.arange(ptr.size) > 0), np.zeros(1, np.int32), np.zeros(1, np.float32)
        self.features = weight.shape[1]
        self.register_buffer("value", torch.from_numpy(value))
        self.register_buffer("column", torch.from_numpy(column))
        self.register_buffer("ptr", torch.from_numpy(ptr))
        bias = getattr(layer, "bias", None)
        self.register_buffer("shift", torch.zeros(weight.shape[0]) if bias is None else bias.detach().float().clone())

    def fold(self, k: Tensor, c: Tensor) -> None:
        rows = torch.repeat_interleave(torch.arange(self.shift.numel()), self.ptr.diff())
        self.value = (self.value.double() * k[rows]).float()
        self.shift = (self.shift.double() * k + c).float()

    def forward(self, x: Tensor, *residual: Tensor) -> Tensor:
        return SparseLinearFunction.apply(x, self.value, self.column, self.ptr, self.shift, self.features,
                                           self.bounds, self.layer, *residual)
