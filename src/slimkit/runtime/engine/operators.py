"""slimkit's C++ operators as torch sees them: one autograd Function per operator (BinaryConv2d,
SparseConv2d, QuantSparseConv2d, SparseLinear, as engine/cpp has one file per operator). Its forward computes
in torch what the operator computes, the reference an exported graph is traced with and tested against; its
symbolic writes the operator's custom ONNX node in the `slimkit` domain, attributes and typed outputs
included. Also the packed sign bits one binary operator hands the next (sign_bits, signs_from_bits).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from slimkit.binary.functions import Zero, sign
from slimkit.errors import SlimkitError

DOMAIN = "slimkit"


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


def _epilogue_attributes(bounds: tuple[float, float] | None, layer: str) -> dict[str, Any]:
    """The attributes every operator has: its fused clamp, and the model layer it is (the node's name in
    OpenVINO, so profiles and kernel reports name layers)."""
    low, high = bounds or (0.0, 0.0)
    return {"clamp_i": int(bounds is not None), "low_f": low, "high_f": high, "layer_s": layer}


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


class BinaryConv2dFunction(torch.autograd.Function):
    """clamp(conv(sign(x), signs) * scale + shift (+ residual)) in torch; one slimkit::BinaryConv2d in ONNX.
    `pack` (a sign convention) adds the output's sign bits as a second output; `packed`: x is such bits.
    `pool`: a 2x2 max pool of stride 2 follows the affine, then y * post_scale + post_shift (unused otherwise)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, signs: Tensor, scale: Tensor, shift: Tensor, post_scale: Tensor,
                post_shift: Tensor, stride: int, pad: int, pool: bool, zero: Zero, bounds: tuple[float, float] | None,
                layer: str, pack: Zero | None, packed: bool, *residual: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        binary = signs_from_bits(x, signs.shape[1]) if packed else sign(x, zero)
        y = F.conv2d(binary, signs, None, stride, pad) * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
        if pool:
            y = F.max_pool2d(y, 2) * post_scale.reshape(1, -1, 1, 1) + post_shift.reshape(1, -1, 1, 1)
        y = _epilogue(y, bounds, residual)
        return y if pack is None else (y, sign_bits(y, pack))

    @staticmethod
    def symbolic(g: Any, x: Any, signs: Any, scale: Any, shift: Any, post_scale: Any, post_shift: Any, stride: int,
                 pad: int, pool: bool, zero: Zero, bounds: tuple[float, float] | None, layer: str, pack: Zero | None,
                 packed: bool, *residual: Any) -> Any:
        pack_output = {None: 0, "zero": 1, "positive": 2}[pack]
        post = (post_scale, post_shift) if pool else ()
        out = g.op(f"{DOMAIN}::BinaryConv2d", x, signs, scale, shift, *post, *residual, stride_i=stride, pad_i=pad,
                   one_plane_i=int(zero == "positive"), pack_output_i=pack_output, packed_input_i=int(packed),
                   pool_i=2 if pool else 0, **_epilogue_attributes(bounds, layer), outputs=2 if pack_output else 1)
        shape = signs.type().sizes()
        sizes = _conv_sizes(shape[0], (shape[2], shape[3]), stride, pad)
        if pool:  # the pool's floor(side / 2) windows
            sizes = (lambda conv: lambda known: [None if n is None else n // 2 if i >= 2 else n
                                                 for i, n in enumerate(conv(known))])(sizes)
        if packed:  # bits [B, 2, words, H, W]: the conv's sizes from B, H, W
            sizes = (lambda conv: lambda known: conv([known[0], None, *known[3:]]))(sizes)
        return _typed_outputs(out, x, sizes, torch.int64 if pack_output else None)


class SparseConv2dFunction(torch.autograd.Function):
    """clamp(conv(x, W) + shift (+ residual)) with W held as CSR; one slimkit::SparseConv2d in ONNX."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, value: Tensor, channel: Tensor, tap: Tensor, ptr: Tensor, shift: Tensor,
                shape: tuple[int, int, int, int], stride: int, pad: int, bounds: tuple[float, float] | None, layer: str,
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
                 layer: str, *residual: Any) -> Any:
        out = g.op(f"{DOMAIN}::SparseConv2d", x, value, channel, tap, ptr, shift, *residual, kernel_h_i=shape[2],
                   kernel_w_i=shape[3], stride_i=stride, pad_i=pad, **_epilogue_attributes(bounds, layer))
        return _typed(out, x, _conv_sizes(shape[0], (shape[2], shape[3]), stride, pad))


Grid = tuple[float, int, int]  # an 8-bit grid with zero point 0: step, lowest and highest integer


def _on_grid(x: Tensor, grid: Grid | None) -> Tensor:
    """torch's fake quantization (what the int8 graph computes), or x where there is no quantizer."""
    return x if grid is None else torch.fake_quantize_per_tensor_affine(x, grid[0], 0, grid[1], grid[2])


def _grid_attributes(name: str, grid: Grid | None) -> dict[str, float]:
    step, low, high = grid or (0.0, 0, 0)
    return {f"{name}_step_f": float(step), f"{name}_low_f": float(low), f"{name}_high_f": float(high)}


class QuantSparseConv2dFunction(torch.autograd.Function):
    """post(clamp(pre(conv(Q_in(x), W) + bias) (+ residual))) for int8 W kept in blocks of 4 input channels;
    one slimkit::QuantSparseConv2d in ONNX."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, group: Tensor, tap: Tensor, ptr: Tensor, scale: Tensor,
                bias: Tensor, shape: tuple[int, int, int, int], stride: int, pad: int, grids: tuple[Grid | None, ...],
                bounds: tuple[float, float] | None, layer: str, link: Grid | None, linked: bool, float_output: bool,
                *residual: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        out, channels, kernel_h, kernel_w = shape
        if grids[0] is None:
            raise SlimkitError("QuantSparseConv2d reads its input on an 8-bit grid, and was given none")
        step_in = grids[0][0]
        if linked:  # the previous layer's integers [B, G, H, W, 4], on this layer's input grid
            x = x.permute(0, 1, 4, 2, 3).flatten(1, 2)[:, :channels].float() * step_in
        rows = torch.repeat_interleave(torch.arange(out), ptr.diff())
        dense = torch.zeros(out, (channels + 3) // 4, 4, kernel_h * kernel_w)
        dense[rows, group.long(), :, tap.long()] = weight.reshape(-1, 4).float()
        dense = dense.reshape(out, -1, kernel_h * kernel_w)[:, :channels].reshape(shape)
        y = F.conv2d(_on_grid(x, grids[0]), dense * (scale / step_in).reshape(-1, 1, 1, 1), bias, stride, pad)
        y = _on_grid(_epilogue(_on_grid(y, grids[1]), bounds, residual), grids[2])
        if link is None:
            return y
        integers = F.pad(torch.round(y / link[0]), (0, 0, 0, 0, 0, -out % 4)).to(torch.int16)
        return y, integers.unflatten(1, (-1, 4)).permute(0, 1, 3, 4, 2).contiguous()

    @staticmethod
    def symbolic(g: Any, x: Any, weight: Any, group: Any, tap: Any, ptr: Any, scale: Any, bias: Any,
                 shape: tuple[int, int, int, int], stride: int, pad: int, grids: tuple[Grid | None, ...],
                 bounds: tuple[float, float] | None, layer: str, link: Grid | None, linked: bool, float_output: bool,
                 *residual: Any) -> Any:
        attributes = {k: v for name, grid in zip(("in", "pre", "post"), grids, strict=True)
                      for k, v in _grid_attributes(name, grid).items()}
        out = g.op(f"{DOMAIN}::QuantSparseConv2d", x, weight, group, tap, ptr, scale, bias, *residual,
                   kernel_h_i=shape[2], kernel_w_i=shape[3], stride_i=stride, pad_i=pad, **attributes,
                   link_output_i=int(link is not None), linked_input_i=int(linked), float_output_i=int(float_output),
                   **_epilogue_attributes(bounds, layer),
                   outputs=2 if link is not None else 1)
        sizes = _conv_sizes(shape[0], (shape[2], shape[3]), stride, pad)
        if linked:  # integers [B, G, H, W, 4]: the conv's sizes from B, H, W
            sizes = (lambda conv: lambda known: conv(known[:4]))(sizes)
        return _typed_outputs(out, x, sizes, torch.int16 if link is not None else None)


class SparseLinearFunction(torch.autograd.Function):
    """clamp(x W^T + shift (+ residual)) with W held as CSR; one slimkit::SparseLinear in ONNX."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, value: Tensor, column: Tensor, ptr: Tensor, shift: Tensor, features: int,
                bounds: tuple[float, float] | None, layer: str, *residual: Tensor) -> Tensor:
        rows = torch.repeat_interleave(torch.arange(ptr.numel() - 1), ptr.diff())
        weight = torch.zeros(ptr.numel() - 1, features).index_put_((rows, column.long()), value, accumulate=True)
        return _epilogue(F.linear(x, weight, shift), bounds, residual)

    @staticmethod
    def symbolic(g: Any, x: Any, value: Any, column: Any, ptr: Any, shift: Any, features: int,
                 bounds: tuple[float, float] | None, layer: str, *residual: Any) -> Any:
        out = g.op(f"{DOMAIN}::SparseLinear", x, value, column, ptr, shift, *residual,
                   **_epilogue_attributes(bounds, layer))
        return _typed(out, x, lambda known: [*known[:-1], ptr.type().sizes()[0] - 1])
