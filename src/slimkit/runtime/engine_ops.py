"""Compressed models as OpenVINO models with slimkit's operators inside: the deployable artifact.

`engine_form(model, input_shape)` swaps every binary conv for `slimkit::BinaryConv2d` and every conv or
linear layer at least SPARSE_MIN sparse for `slimkit::SparseConv2d` / `slimkit::SparseLinear` (modules
that compute the eval output in torch and export to ONNX as one custom node each), then fuses into each
node the BatchNorm, residual add and ReLU/hardtanh that alone read it. `export_openvino` writes that ONNX,
reads it into OpenVINO with slimkit's operator library (runtime/native, built by the set-up) and saves an
OpenVINO IR (`model.xml` + `model.bin`), which plain OpenVINO runs once the library is added:

    core = openvino.Core(); core.add_extension("libslimkit_openvino.so"); core.read_model("model.xml")

Every other layer is OpenVINO's own. Binary window sums are exact (two bit planes, or one under sign(0) =
+1); folded epilogues round once where eval rounds twice, so whole networks agree within float rounding.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils import parametrize

from slimkit.binary.functions import Zero, sign
from slimkit.binary.layers import BinaryConv2d, BinaryLinear
from slimkit.errors import SlimkitError, first_line
from slimkit.files import atomic_write
from slimkit.folding import batchnorm_affine
from slimkit.layers import adapter_of, canonical_weight
from slimkit.quant.attach import weight_quantization
from slimkit.quant.int8_graph import FoldedLayer, int8_graph, is_quantized
from slimkit.quant.onnx_export import export_onnx
from slimkit.quant.quantizers import UniformQuantizer
from slimkit.runtime import native
from slimkit.runtime.engines import shared_core
from slimkit.sparsity.blocks import block_sums

DOMAIN = "slimkit"
LIBRARY_NAME = "libslimkit_openvino.so"  # the name the library has beside an exported model
SPARSE_MIN = 0.7  # a fixed threshold; layers are not yet timed one by one against OpenVINO's dense kernel


def _epilogue(y: Tensor, bounds: tuple[float, float] | None, residual: tuple[Tensor, ...]) -> Tensor:
    if residual:
        y = y + residual[0]
    return y if bounds is None else y.clamp(*bounds)


def _typed(out: Any, x: Any, sizes: Any) -> Any:
    """Give a custom node's output its type and shape (`sizes` maps the input's sizes, None where dynamic),
    so the exporter's shape inference knows it instead of warning that it cannot."""
    try:
        known = x.type().varyingSizes()
    except RuntimeError:  # an input of unknown rank
        return out
    if known is not None:
        out.setType(x.type().with_sizes(sizes(known)))
    return out


def _typed_outputs(out: Any, x: Any, sizes: Any, link_dtype: torch.dtype | None) -> Any:
    """Type an operator's output (see _typed) and, where it hands the next operator a second output (sign
    bits, integers), that output's element type."""
    if link_dtype is None:
        return _typed(out, x, sizes)
    y, link = out
    _typed(y, x, sizes)
    link.setType(link.type().with_dtype(link_dtype))
    return y, link


def _conv_sizes(out_channels: int, kernel: tuple[int, int], stride: int, pad: int) -> Any:
    def sizes(known: list[int | None]) -> list[int | None]:
        spatial = [None if n is None else (n + 2 * pad - k) // stride + 1
                   for n, k in zip(known[2:], kernel, strict=True)]
        return [known[0], out_channels, *spatial]
    return sizes


def _epilogue_attributes(bounds: tuple[float, float] | None) -> dict[str, Any]:
    low, high = bounds or (0.0, 0.0)
    return {"clamp_i": int(bounds is not None), "low_f": low, "high_f": high}


def sign_bits(y: Tensor, zero: Zero) -> Tensor:
    """y's signs as slimkit::BinaryConv2d's packed output: int64 [B, 2, ceil(C / 64), H, W], the non-zero
    plane then the positive plane, channel c at bit c % 64 of word c / 64 (bit 63 is the sign bit)."""
    batch, channels, height, width = y.shape
    words = (channels + 63) // 64
    nonzero = torch.ones_like(y, dtype=torch.bool) if zero == "positive" else y != 0
    positive = y >= 0 if zero == "positive" else y > 0
    planes = F.pad(torch.stack([nonzero, positive], 1).long(), (0, 0, 0, 0, 0, words * 64 - channels))
    weights = torch.ones(64, dtype=torch.int64) << torch.arange(64)  # 1 << 63 wraps to -2**63, as in C++
    return (planes.reshape(batch, 2, words, 64, height, width) * weights.reshape(1, 1, 1, 64, 1, 1)).sum(3)


def signs_from_bits(bits: Tensor, channels: int) -> Tensor:
    """The -1/0/+1 tensor [B, channels, H, W] that `sign_bits` packed."""
    batch, _, words, height, width = bits.shape
    flags = (bits.unsqueeze(3) >> torch.arange(64).reshape(1, 1, 1, 64, 1, 1)) & 1
    nonzero, positive = flags.reshape(batch, 2, words * 64, height, width)[:, :, :channels].float().unbind(1)
    return nonzero * (2 * positive - 1)


class _BinaryConvFunction(torch.autograd.Function):
    """clamp(conv(sign(x), signs) * scale + shift (+ residual)) in torch; one slimkit::BinaryConv2d in ONNX.
    `pack` (a sign convention) adds the output's sign bits as a second output; `packed`: x is such bits."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, signs: Tensor, scale: Tensor, shift: Tensor, stride: int, pad: int,
                zero: Zero, bounds: tuple[float, float] | None, pack: Zero | None, packed: bool,
                *residual: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        binary = signs_from_bits(x, signs.shape[1]) if packed else sign(x, zero)
        y = F.conv2d(binary, signs, None, stride, pad) * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
        y = _epilogue(y, bounds, residual)
        return y if pack is None else (y, sign_bits(y, pack))

    @staticmethod
    def symbolic(g: Any, x: Any, signs: Any, scale: Any, shift: Any, stride: int, pad: int, zero: Zero,
                 bounds: tuple[float, float] | None, pack: Zero | None, packed: bool, *residual: Any) -> Any:
        pack_output = {None: 0, "zero": 1, "positive": 2}[pack]
        out = g.op(f"{DOMAIN}::BinaryConv2d", x, signs, scale, shift, *residual, stride_i=stride, pad_i=pad,
                   one_plane_i=int(zero == "positive"), pack_output_i=pack_output, packed_input_i=int(packed),
                   **_epilogue_attributes(bounds), outputs=2 if pack_output else 1)
        shape = signs.type().sizes()
        sizes = _conv_sizes(shape[0], tuple(shape[2:]), stride, pad)
        if packed:  # bits [B, 2, words, H, W]: the conv's sizes from B, H, W
            sizes = (lambda conv: lambda known: conv([known[0], None, *known[3:]]))(sizes)
        return _typed_outputs(out, x, sizes, torch.int64 if pack_output else None)


class _SparseConvFunction(torch.autograd.Function):
    """clamp(conv(x, W) + shift (+ residual)) with W held as CSR; one slimkit::SparseConv2d in ONNX."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, value: Tensor, channel: Tensor, tap: Tensor, ptr: Tensor, shift: Tensor,
                shape: tuple[int, int, int, int], stride: int, pad: int, bounds: tuple[float, float] | None,
                *residual: Tensor) -> Tensor:
        out, channels, kernel_h, kernel_w = shape
        rows = torch.repeat_interleave(torch.arange(out), ptr.diff())
        weight = torch.zeros(out, channels, kernel_h * kernel_w)
        weight.index_put_((rows, channel.long(), tap.long()), value, accumulate=True)
        y = F.conv2d(x, weight.reshape(shape), shift, stride, pad)
        return _epilogue(y, bounds, residual)

    @staticmethod
    def symbolic(g: Any, x: Any, value: Any, channel: Any, tap: Any, ptr: Any, shift: Any,
                 shape: tuple[int, int, int, int], stride: int, pad: int, bounds: tuple[float, float] | None,
                 *residual: Any) -> Any:
        out = g.op(f"{DOMAIN}::SparseConv2d", x, value, channel, tap, ptr, shift, *residual, kernel_h_i=shape[2],
                   kernel_w_i=shape[3], stride_i=stride, pad_i=pad, **_epilogue_attributes(bounds))
        return _typed(out, x, _conv_sizes(shape[0], tuple(shape[2:]), stride, pad))


Grid = tuple[float, int, int]  # an 8-bit grid with zero point 0: step, lowest and highest integer


def _on_grid(x: Tensor, grid: Grid | None) -> Tensor:
    """torch's fake quantization (what the int8 graph computes), or x where there is no quantizer."""
    return x if grid is None else torch.fake_quantize_per_tensor_affine(x, grid[0], 0, grid[1], grid[2])


def _grid_attributes(name: str, grid: Grid | None) -> dict[str, float]:
    step, low, high = grid or (0.0, 0, 0)
    return {f"{name}_step_f": float(step), f"{name}_low_f": float(low), f"{name}_high_f": float(high)}


class _QuantSparseConvFunction(torch.autograd.Function):
    """post(clamp(pre(conv(Q_in(x), W) + bias) (+ residual))) for int8 W kept in blocks of 4 input channels;
    one slimkit::QuantSparseConv2d in ONNX."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, group: Tensor, tap: Tensor, ptr: Tensor, scale: Tensor,
                bias: Tensor, shape: tuple[int, int, int, int], stride: int, pad: int, grids: tuple[Grid | None, ...],
                bounds: tuple[float, float] | None, link: Grid | None, linked: bool, float_output: bool,
                *residual: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out, channels, kernel_h, kernel_w = shape
        if linked:  # the previous layer's integers [B, G, H, W, 4], on this layer's input grid
            x = x.permute(0, 1, 4, 2, 3).flatten(1, 2)[:, :channels].float() * grids[0][0]
        rows = torch.repeat_interleave(torch.arange(out), ptr.diff())
        dense = torch.zeros(out, (channels + 3) // 4, 4, kernel_h * kernel_w)
        dense[rows, group.long(), :, tap.long()] = weight.reshape(-1, 4).float()
        dense = dense.reshape(out, -1, kernel_h * kernel_w)[:, :channels].reshape(shape)
        step_in = grids[0][0]
        y = F.conv2d(_on_grid(x, grids[0]), dense * (scale / step_in).reshape(-1, 1, 1, 1), bias, stride, pad)
        y = _on_grid(_epilogue(_on_grid(y, grids[1]), bounds, residual), grids[2])
        if link is None:
            return y
        integers = F.pad(torch.round(y / link[0]), (0, 0, 0, 0, 0, -out % 4)).to(torch.int16)
        return y, integers.unflatten(1, (-1, 4)).permute(0, 1, 3, 4, 2).contiguous()

    @staticmethod
    def symbolic(g: Any, x: Any, weight: Any, group: Any, tap: Any, ptr: Any, scale: Any, bias: Any,
                 shape: tuple[int, int, int, int], stride: int, pad: int, grids: tuple[Grid | None, ...],
                 bounds: tuple[float, float] | None, link: Grid | None, linked: bool, float_output: bool,
                 *residual: Any) -> Any:
        attributes = {k: v for name, grid in zip(("in", "pre", "post"), grids, strict=True)
                      for k, v in _grid_attributes(name, grid).items()}
        out = g.op(f"{DOMAIN}::QuantSparseConv2d", x, weight, group, tap, ptr, scale, bias, *residual,
                   kernel_h_i=shape[2], kernel_w_i=shape[3], stride_i=stride, pad_i=pad, **attributes,
                   link_output_i=int(link is not None), linked_input_i=int(linked), float_output_i=int(float_output),
                   **_epilogue_attributes(bounds),
                   outputs=2 if link is not None else 1)
        sizes = _conv_sizes(shape[0], tuple(shape[2:]), stride, pad)
        if linked:  # integers [B, G, H, W, 4]: the conv's sizes from B, H, W
            sizes = (lambda conv: lambda known: conv(known[:4]))(sizes)
        return _typed_outputs(out, x, sizes, torch.int16 if link is not None else None)


class _SparseLinearFunction(torch.autograd.Function):
    """clamp(x W^T + shift (+ residual)) with W held as CSR; one slimkit::SparseLinear in ONNX."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, value: Tensor, column: Tensor, ptr: Tensor, shift: Tensor, features: int,
                bounds: tuple[float, float] | None, *residual: Tensor) -> Tensor:
        rows = torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff())
        weight = torch.zeros(ptr.numel() - 1, features).index_put_((rows, column.long()), value, accumulate=True)
        return _epilogue(F.linear(x, weight, shift), bounds, residual)

    @staticmethod
    def symbolic(g: Any, x: Any, value: Any, column: Any, ptr: Any, shift: Any, features: int,
                 bounds: tuple[float, float] | None, *residual: Any) -> Any:
        out = g.op(f"{DOMAIN}::SparseLinear", x, value, column, ptr, shift, *residual, **_epilogue_attributes(bounds))
        return _typed(out, x, lambda known: [*known[:-1], ptr.type().sizes()[0] - 1])


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

    def __init__(self) -> None:
        super().__init__()
        self.residual = False
        self.bounds: tuple[float, float] | None = None
        self.fused: list[str] = []

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

    def __init__(self, layer: BinaryConv2d):
        super().__init__()
        self.stride, self.pad = _square(layer, "binary conv")
        if not hasattr(layer.input_binarizer, "normalized"):
            raise SlimkitError("a weights-only binary conv has real-valued inputs; it has no engine binary form")
        with torch.no_grad():
            signs, scale = layer.weight_binarizer.eval()(layer.weight)
        if not bool((signs.abs() == 1).all()):
            raise SlimkitError("some binary weights are 0 (an exactly-zero latent weight, or {0, 1} codes); "
                               "the engine's binary conv needs +-1 weights")
        out = signs.shape[0]
        self.input_binarizer = layer.input_binarizer
        self.register_buffer("signs", signs.detach().float().contiguous().clone())
        self.register_buffer("scale", (torch.ones(out) if scale is None else scale.detach().reshape(-1).expand(out))
                             .float().contiguous().clone())
        self.register_buffer("shift", (torch.zeros(out) if layer.bias is None else layer.bias.detach()).float().clone())
        self.pack: Zero | None = None  # set by _link_operators: also output the sign bits, under this convention
        self.linked = False  # set by _link_operators: the input is the previous binary layer's sign bits

    def fold(self, k: Tensor, c: Tensor) -> None:
        """In float64, rounded once: the window sums stay exact, only the epilogue's rounding changes."""
        self.scale = (self.scale.double() * k).float()
        self.shift = (self.shift.double() * k + c).float()

    def forward(self, x: Tensor, *residual: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        x = x if self.linked else self.input_binarizer.normalized(x)
        return _BinaryConvFunction.apply(x, self.signs, self.scale, self.shift, self.stride, self.pad,
                                         self.input_binarizer.zero, self.bounds, self.pack, self.linked, *residual)


class EngineSparseConv2d(EngineConv):
    """A pruned float conv as slimkit::SparseConv2d: its non-zeros in CSR over output channels (each
    channel's entries padded to a multiple of 4 with zeros), the bias as the shift."""

    operator = f"{DOMAIN}::SparseConv2d"

    def __init__(self, layer: nn.Conv2d):
        super().__init__()
        from slimkit.runtime.layouts import conv_by_output

        self.stride, self.pad = _square(layer, "sparse conv")
        weight = layer.weight.detach().float()
        ptr, channel, tap, value = conv_by_output(weight.numpy())
        if value.size == 0:  # an all-zero layer: one group of zero entries, so no constant is empty
            ptr, channel, tap, value = ptr + np.int64(4) * (np.arange(ptr.size) > 0), *(a.repeat(4) for a in (
                np.zeros(1, np.int32), np.zeros(1, np.int32), np.zeros(1, np.float32)))
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
        return _SparseConvFunction.apply(x, self.value, self.channel, self.tap, self.ptr, self.shift, self.shape,
                                         self.stride, self.pad, self.bounds, *residual)


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
        self.link: Grid | None = None  # set by _link_operators: also output the integers on this last grid
        self.linked = False  # set by _link_operators: the input is the previous int8 layer's integers
        self.float_output = True  # set by _link_operators: False when every reader takes the integers

    def geometry(self, conv: nn.Module) -> tuple[int, int]:
        """(stride, pad) of the conv."""
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
        return _QuantSparseConvFunction.apply(x, self.weight, self.group, self.tap, self.ptr, scale, self.bias,
                                              self.shape, self.stride, self.pad, tuple(self.grids), self.bounds,
                                              self.link, self.linked, self.float_output, *residual)


class EngineQuantSparseLinear(EngineQuantSparseConv2d):
    """A linear layer of the int8 graph (a FoldedLayer around nn.Linear) as slimkit::QuantSparseConv2d: x W^T
    is a 1x1 conv over a 1 x N image whose N positions are the rows of x, so a batch fills the operator's tiles
    of positions as an image's pixels do. Its input and output are floats (no integer links)."""

    links_integers = False

    def geometry(self, conv: nn.Module) -> tuple[int, int]:
        return 1, 0

    def forward(self, x: Tensor, *residual: Tensor) -> Tensor:
        def as_image(t: Tensor) -> Tensor:  # (..., features) -> (1, features, 1, rows)
            return t.reshape(-1, t.shape[-1]).t().unsqueeze(0).unsqueeze(2)

        y = super().forward(as_image(x), *(as_image(r) for r in residual))
        return y.squeeze(2).squeeze(0).t().reshape(*x.shape[:-1], self.shape[0])


class EngineSparseLinear(EngineConv):
    """A pruned linear layer (or a registered linear map, such as HF's Conv1D) as slimkit::SparseLinear: its
    non-zeros in CSR over output features, the bias as the shift."""

    operator = f"{DOMAIN}::SparseLinear"

    def __init__(self, layer: nn.Module):
        super().__init__()
        weight = canonical_weight(layer).detach().float()  # (out, in), also for HF's (in, out) Conv1D
        rows, column = torch.nonzero(weight, as_tuple=True)
        if rows.numel() == 0:  # an all-zero layer: one zero entry, so no constant is empty
            rows, column = torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
        self.features = weight.shape[1]
        self.register_buffer("value", weight[rows, column].contiguous())
        self.register_buffer("column", column.to(torch.int32))
        self.register_buffer("ptr", torch.cat([torch.zeros(1, dtype=torch.int64),
                                               torch.bincount(rows, minlength=weight.shape[0]).cumsum(0)]))
        bias = getattr(layer, "bias", None)
        self.register_buffer("shift", torch.zeros(weight.shape[0]) if bias is None else bias.detach().float().clone())

    def fold(self, k: Tensor, c: Tensor) -> None:
        rows = torch.repeat_interleave(torch.arange(self.shift.numel()), self.ptr.diff())
        self.value = (self.value.double() * k[rows]).float()
        self.shift = (self.shift.double() * k + c).float()

    def forward(self, x: Tensor, *residual: Tensor) -> Tensor:
        return _SparseLinearFunction.apply(x, self.value, self.column, self.ptr, self.shift, self.features,
                                           self.bounds, *residual)


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, EngineConv | BinaryConv2d | BinaryLinear | UniformQuantizer)
                or super().is_leaf_module(m, qualname))


def _clamp_bounds(node: fx.Node, modules: dict[str, nn.Module]) -> tuple[float, float] | None:
    """(low, high) when `node` is a ReLU or hardtanh, else None."""
    if node.op == "call_module":
        module = modules[str(node.target)]
        if type(module) is nn.ReLU:
            return (0.0, math.inf)
        if type(module) is nn.Hardtanh:
            return (float(module.min_val), float(module.max_val))
    if node.op == "call_function" and node.target in (F.relu, torch.relu):
        return (0.0, math.inf)
    if node.op == "call_function" and node.target is F.hardtanh:
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        return (float(low), float(high))
    return None


def _fuse_epilogues(model: nn.Module, input_shape: Sequence[int]) -> nn.Module:
    """Fuse into each engine conv, in this order, what alone reads its output: an eval BatchNorm with
    running statistics, an add of a tensor of the output's own shape (shapes propagated from an input of
    `input_shape`, so a broadcast add is never read as a residual), then a ReLU/hardtanh. Each fused op is one
    pass over a batch's activations saved, and no OpenVINO node (with its layout reorders) between two
    slimkit nodes."""
    traced = fx.GraphModule(model, _LeafTracer().trace(model))
    graph = traced.graph
    modules = dict(model.named_modules())
    for conv in [n for n in graph.nodes if n.op == "call_module" and isinstance(modules[str(n.target)], EngineConv)]:
        source = conv.args[0]
        if isinstance(source, fx.Node) and source.op == "call_module":
            # the operator rounds its input onto this quantizer's grid itself (idempotent on values already on
            # it), and reads the quantizer's output for now, so that an operator before it can fuse the
            # quantizer as its own last step (see the end): no quantize node between two operators
            modules[str(conv.target)].fuse_input(modules[str(source.target)], str(source.target))
    ShapeProp(traced).propagate(torch.zeros(1, *input_shape))

    def shape(node: fx.Node) -> Any:
        return getattr(node.meta.get("tensor_meta"), "shape", None)

    def sole_module(users: list[fx.Node]) -> nn.Module | None:
        return modules.get(str(users[0].target)) if len(users) == 1 and users[0].op == "call_module" else None

    for conv in [n for n in graph.nodes if n.op == "call_module" and isinstance(modules[str(n.target)], EngineConv)]:
        layer: EngineConv = modules[str(conv.target)]
        tail, residual = conv, None
        users = list(tail.users)
        bn = sole_module(users)
        if isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None:
            layer.fuse_batchnorm(modules[str(users[0].target)], str(users[0].target))
            tail, users = users[0], list(users[0].users)
        if (quantizer := sole_module(users)) is not None and layer.fuse_quantizer(quantizer, str(users[0].target)):
            tail, users = users[0], list(users[0].users)
        if (len(users) == 1 and users[0].op == "call_function" and users[0].target in (operator.add, torch.add)
                and len(users[0].args) == 2 and not users[0].kwargs
                and all(isinstance(a, fx.Node) for a in users[0].args) and users[0].args[0] is not users[0].args[1]
                and shape(users[0].args[0]) is not None and shape(users[0].args[0]) == shape(users[0].args[1])):
            residual = next(a for a in users[0].args if a is not tail)
            layer.fuse_residual(users[0].name)
            tail, users = users[0], list(users[0].users)
        bounds = _clamp_bounds(users[0], modules) if len(users) == 1 else None
        if bounds is not None:
            layer.fuse_clamp(*bounds, _label(users[0]))
            tail, users = users[0], list(users[0].users)
        if (quantizer := sole_module(users)) is not None and layer.fuse_quantizer(quantizer, str(users[0].target)):
            tail = users[0]
        if tail is conv:
            continue
        with graph.inserting_before(tail):
            fused = graph.call_module(str(conv.target), (conv.args[0], *([residual] if residual is not None else [])))
        fused.meta = dict(tail.meta)  # its output is the tail's: a later layer's residual check reads this shape
        tail.replace_all_uses_with(fused)
        for dead in reversed(_chain(conv, tail)):
            graph.erase_node(dead)
    for conv in [n for n in graph.nodes if n.op == "call_module" and isinstance(modules[str(n.target)], EngineConv)]:
        source = conv.args[0]  # a quantizer no operator fused: the operator applies it to the raw input instead
        if (isinstance(source, fx.Node) and source.op == "call_module"
                and str(source.target) in modules[str(conv.target)].fused):
            conv.args = (source.args[0], *conv.args[1:])
    graph.eliminate_dead_code()  # those quantizers, where nothing else reads them
    traced.recompile()
    return traced


def _split_outputs(graph: fx.Graph, producer: fx.Node, readers: list[fx.Node]) -> fx.Node:
    """Give a two-output node's outputs their own nodes: `readers` take output 1 as their input, every other
    reader output 0 (returned: it may have no reader left)."""
    with graph.inserting_after(producer):
        second = graph.call_function(operator.getitem, (producer, 1))
    with graph.inserting_after(producer):
        first = graph.call_function(operator.getitem, (producer, 0))
    producer.replace_all_uses_with(first, delete_user_cb=lambda user, own=(first, second): user not in own)
    for reader in readers:
        reader.args = (second, *reader.args[1:])
    return first


def _link_operators(traced: fx.GraphModule) -> dict[str, str]:
    """Let an operator hand the next one its input in the form the next one computes on, instead of floats it
    would read and convert again (the float output stays for any other reader, such as a residual add):
    - a binary conv whose output a later binary conv binarizes as it is writes that output's sign bits;
    - an int8 conv whose output a later int8 conv quantizes on the same grid writes its integers.
    Returns each linked reader's name and what it reads."""
    graph, modules = traced.graph, dict(traced.named_modules())

    def operator_of(node: fx.Node, kind: type) -> Any:
        module = modules.get(str(node.target)) if node.op == "call_module" else None
        return module if isinstance(module, kind) else None

    linked: dict[str, str] = {}
    for producer in list(graph.nodes):
        quantized = operator_of(producer, EngineQuantSparseConv2d)
        if (binary := operator_of(producer, EngineBinaryConv2d)) is not None:
            readers = [u for u in producer.users if (r := operator_of(u, EngineBinaryConv2d)) is not None
                       and u.args[0] is producer and r.input_binarizer.signs_input_in_eval]
            conventions = {operator_of(u, EngineBinaryConv2d).input_binarizer.zero for u in readers}
            if len(conventions) != 1:  # none, or readers that binarize 0 differently: floats for all of them
                continue
            binary.pack = conventions.pop()
            what = "the previous binary layer's sign bits"
        elif quantized is not None:
            grid = quantized.last_grid()
            readers = [u for u in producer.users if (r := operator_of(u, EngineQuantSparseConv2d)) is not None
                       and r.links_integers and u.args[0] is producer and grid is not None and r.grids[0] == grid]
            if not readers or not quantized.links_integers:
                continue
            quantized.link = grid
            what = "the previous int8 layer's integers"
        else:
            continue
        floats = _split_outputs(graph, producer, readers)
        if quantized is not None and not floats.users:  # every reader takes the integers
            quantized.float_output = False
        for reader in readers:
            modules[str(reader.target)].linked = True
            linked[str(reader.target)] = what
    traced.recompile()
    return linked


def _label(node: fx.Node) -> str:
    """A module's path for a module call, the traced node's name for a function (an add, F.relu)."""
    return str(node.target) if node.op == "call_module" else node.name


def _chain(first: fx.Node, last: fx.Node) -> list[fx.Node]:
    """The single-user chain of nodes from `first` to `last`, both included."""
    chain = [first]
    while chain[-1] is not last:
        chain.append(next(iter(chain[-1].users)))
    return chain


def _block_sparsity(weight: Tensor) -> float:
    """The share of (output channel, tap, 4 input channels) blocks that are all zero."""
    return float((block_sums(weight.abs(), 4) == 0).float().mean())


def _engine_layer(module: nn.Module, small_convs: bool = False) -> tuple[type[EngineConv] | None, str]:
    """Which operator a layer becomes, or (None, why not) for a layer that stays OpenVINO's own. A quantized
    model's convs are judged as the int8 graph's FoldedLayers they become (engine_form builds that graph);
    `small_convs`: a dense one of at most 4 input channels joins the int8 operators already in the model."""
    if isinstance(module, BinaryConv2d):
        return EngineBinaryConv2d, ""
    if isinstance(module, FoldedLayer) or weight_quantization(module) is not None:
        layer = module.layer if isinstance(module, FoldedLayer) else module
        if not isinstance(layer, nn.Conv2d | nn.Linear):  # a QAT layer's class is torch's parametrized subclass
            return None, ""
        linear = isinstance(layer, nn.Linear)
        sparsity = _block_sparsity(layer.weight.detach())
        if sparsity < SPARSE_MIN and (linear or not (small_convs and layer.in_channels <= 4)):
            return None, (f"{sparsity:.0%} of its 4-channel blocks are zero: below {SPARSE_MIN:.0%}, OpenVINO's "
                          f"int8 {'linear' if linear else 'conv'} wins") if sparsity else ""
        return (EngineQuantSparseLinear if linear else EngineQuantSparseConv2d), ""
    adapter = adapter_of(module)
    linear = type(module) is nn.Linear or (adapter is not None and adapter.linear_map and type(module) is not nn.Conv2d
                                           and not isinstance(module, BinaryLinear))
    if (type(module) is not nn.Conv2d and not linear) or parametrize.is_parametrized(module):
        return None, ""
    sparsity = float((canonical_weight(module) == 0).float().mean())
    kind = "linear" if linear else "conv"
    if sparsity < SPARSE_MIN:
        return None, f"{sparsity:.0%} sparse: below {SPARSE_MIN:.0%}, OpenVINO's dense {kind} wins" if sparsity else ""
    return (EngineSparseLinear if linear else EngineSparseConv2d), ""


def runs_slimkit_operators(model: nn.Module) -> bool:
    """Whether any layer would become a slimkit operator: the layer rule alone, without the copy, tracing and
    shape propagation that engine_form does."""
    return any(_engine_layer(module)[0] is not None for module in model.modules())


def engine_form(model: nn.Module, input_shape: Sequence[int], calibration: Iterable[Tensor] | None = None,
                ) -> tuple[nn.Module, list[dict[str, Any]]]:
    """An eval-mode copy with every binary conv, and every conv and linear layer at least SPARSE_MIN sparse, in
    its engine operator's form, epilogues fused, and a line per such layer saying what it became and what it absorbed.
    A layer the operators do not take (dilated, grouped, 0-valued binary weights) stays the training graph's
    own ops, which OpenVINO runs exactly but not fast; its line says why. A quantized model becomes its int8
    graph first (calibrated on `calibration`, see quant/int8_graph), whose convs with at least SPARSE_MIN of
    their 4-input-channel blocks zero, or at most 4 input channels, become slimkit::QuantSparseConv2d; the rest
    stays Q/DQ, OpenVINO's int8."""
    if is_quantized(model):
        if calibration is None:
            raise SlimkitError("the engine form of a quantized model needs calibration batches: its int8 graph "
                               "quantizes residual sums, pooled features and logits too")
        model = int8_graph(model, calibration)
    model = copy.deepcopy(model).eval()
    lines: dict[str, dict[str, Any]] = {}
    inside = {f"{n}.layer" for n, m in model.named_modules() if isinstance(m, FoldedLayer)}
    int8_operators = any(_engine_layer(m)[0] is EngineQuantSparseConv2d for m in model.modules())
    for name, module in list(model.named_modules()):
        if name in inside:  # a FoldedLayer's own conv: the FoldedLayer is the unit
            continue
        kind, reason = _engine_layer(module, small_convs=int8_operators)
        if kind is None:
            if reason:
                dense = "OpenVINO dense linear" if " linear wins" in reason else "OpenVINO dense conv"
                lines[name] = {"layer": name, "engine": dense, "reason": reason}
            continue
        try:
            model.set_submodule(name, kind(module))
            lines[name] = {"layer": name, "engine": kind.operator}
        except SlimkitError as exc:
            lines[name] = {"layer": name, "engine": "OpenVINO conv (the training graph's ops)", "reason": str(exc)}
    if not any(isinstance(m, EngineConv) for m in model.modules()):
        return model, list(lines.values())
    try:
        model = _fuse_epilogues(model, input_shape)
    except Exception as exc:  # torch.fx fails on data-dependent control flow, among others
        raise SlimkitError(f"torch.fx could not trace the model to fuse the engine operators' epilogues: "
                           f"{type(exc).__name__}: {first_line(exc)}") from None
    reads = _link_operators(model)
    for name, line in lines.items():
        module = model.get_submodule(name)
        if isinstance(module, EngineConv):
            line["fused"] = module.fused
        if name in reads:
            line["input"] = reads[name]
    return model, list(lines.values())


@cache
def openvino_core() -> Any:
    """The process's OpenVINO Core (engines.shared_core) with slimkit's operators added, once."""
    core = shared_core()
    core.add_extension(str(native.require_library()))
    return core


def export_openvino(model: nn.Module, path: str | Path, input_shape: Sequence[int],
                    calibration: Iterable[Tensor] | None = None) -> dict[str, Any]:
    """Write `model` in its engine form as OpenVINO IR at `path` (.xml, with its .bin beside it), each file
    atomically (a quantized model needs `calibration`, see engine_form). Returns what was written and which
    layers run slimkit's operators."""
    import openvino as ov

    path = Path(path)
    if path.suffix != ".xml":
        raise SlimkitError(f"an OpenVINO model is written as .xml (+ .bin); got {path}")
    engine, layers = engine_form(model, input_shape, calibration)
    core = openvino_core()
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_path = path.with_suffix(".onnx.tmp")
    staging = path.with_name(path.stem + ".staging.xml")
    try:
        uses_ours = any(isinstance(m, EngineConv) for m in engine.modules())
        try:
            export_onnx(engine, onnx_path, input_shape, custom_opsets={DOMAIN: 1} if uses_ours else None)
            ov.save_model(core.read_model(str(onnx_path)), str(staging), compress_to_fp16=False)
        except Exception as exc:  # the exporter's and OpenVINO's failures are many; each names its op
            raise SlimkitError(f"exporting to OpenVINO failed: {type(exc).__name__}: {first_line(exc)}") from None
        for source, target in ((staging.with_suffix(".bin"), path.with_suffix(".bin")), (staging, path)):
            data = source.read_bytes()
            atomic_write(target, lambda f, data=data: f.write(data))
    finally:
        for leftover in (onnx_path, staging, staging.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)
    return {"model": str(path), "weights": str(path.with_suffix(".bin")), "library": str(native.require_library()),
            "slimkit_layers": layers}


def export_folder(model: nn.Module, folder: str | Path, input_shape: Sequence[int],
                  calibration: Iterable[Tensor] | None = None) -> dict[str, Any]:
    """The folder a user deploys: the OpenVINO IR, slimkit's operator library beside it, and engine.json
    saying what runs where and how plain OpenVINO loads it (returned too); every file written atomically."""
    import json

    import openvino

    folder = Path(folder)
    info = export_openvino(model, folder / "model.xml", input_shape, calibration)
    library = Path(info["library"]).read_bytes()
    atomic_write(folder / LIBRARY_NAME, lambda f: f.write(library))
    manifest = {"model": "model.xml", "weights": "model.bin", "library": LIBRARY_NAME,
                "input_shape": list(input_shape), "openvino": openvino.__version__,
                "slimkit_layers": info["slimkit_layers"],
                "load": ["core = openvino.Core()", f"core.add_extension('{LIBRARY_NAME}')",
                         "compiled = core.compile_model(core.read_model('model.xml'), 'CPU')"]}
    atomic_write(folder / "engine.json", lambda f: f.write(json.dumps(manifest, indent=2).encode()))
    return manifest


def node_times(path: str | Path, shape: Sequence[int], threads: int, runs: int = 20) -> list[dict[str, Any]]:
    """OpenVINO's own per-node counters (PERF_COUNT) of a model: each executed node's name, type, kernel and ms
    per inference, averaged over `runs` inferences after a warm-up, in the order OpenVINO reports them (its
    execution order). slimkit's operators appear as their own types, run as 'Reference' kernels."""
    import numpy as np

    core = openvino_core()
    model = core.read_model(str(path))
    model.reshape(list(shape))
    types = {op.get_friendly_name(): op.get_type_name() for op in model.get_ordered_ops()}
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                 "PERF_COUNT": True})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal(tuple(shape), dtype=np.float32)
    for _ in range(3):
        request.infer([x])
    rows: dict[str, dict[str, Any]] = {}
    for _ in range(runs):
        request.infer([x])
        for info in request.profiling_info:
            row = rows.setdefault(info.node_name, {"name": info.node_name, "node": types.get(info.node_name,
                                  info.node_type), "kernel": info.exec_type, "ms": 0.0})
            row["ms"] += info.real_time.total_seconds() * 1e3 / runs
    return [row for row in rows.values() if row["ms"] > 0]


def profile_openvino(path: str | Path, shape: Sequence[int], threads: int, runs: int = 20) -> list[dict[str, Any]]:
    """Where an OpenVINO model's time goes: node_times summed by node type and kernel, in ms per inference,
    slowest first."""
    totals: dict[tuple[str, str], list[float]] = {}
    for row in node_times(path, shape, threads, runs):
        entry = totals.setdefault((row["node"], row["kernel"]), [0.0, 0])
        entry[0] += row["ms"]
        entry[1] += 1
    return sorted(({"node": kind, "kernel": kernel, "ms": ms, "nodes": count}
                   for (kind, kernel), (ms, count) in totals.items()), key=lambda r: -r["ms"])
