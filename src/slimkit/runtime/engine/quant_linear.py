"""slimkit::QuantSparseLinear as torch.export sees it: a torch custom operator, its ONNX translation for the dynamo
exporter, and the module a transformer's quantized linear layer becomes.

A tuple or dict example is captured by torch.export and written by torch.onnx's dynamo exporter
(slimkit.capture), which has no TorchScript symbolic functions, so the operator is a `torch.library` custom op
(`slimkit::quant_sparse_linear`) whose eager kernel is the exact integer arithmetic of the C++ operator, and whose
ONNX translation (TRANSLATIONS, an onnxscript function) writes one `slimkit::QuantSparseLinear` node carrying the
packed weights as initializers. OpenVINO reads that node through the library's ONNX frontend extension.

The operator computes, for x [..., K] and int8 weights W [N, K] kept in blocks of 4 consecutive input features:

    q = clamp(round_half_even(x * (1 / s_in)), qmin, qmax)      (float32 reciprocal, as the C++ and torch's fake
                                                                  quantization compute it)
    y = clamp(float32(q W^T) * scale + bias (+ residual), low, high),   scale = s_in * s_w (per output)

with q W^T an exact int32 sum. The eager model computes float(q s_in) float(W s_w)^T + b instead, which differs
from it by float rounding alone.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.runtime.engine.operators import DOMAIN, Grid

OPERATOR = f"{DOMAIN}::QuantSparseLinear"


def pack_blocks(integers: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The int8 weights `integers` [N, K] in the operator's layout: blocks of 4 consecutive input features (the
    last block padded with zero weights), each block with any non-zero kept whole, in CSR over output features:
    (weight i8 [4 n], group i32 [n] (features 4g..4g+3), ptr i64 [N + 1]). An all-zero layer keeps one zero
    block, so no constant is empty."""
    if integers.dtype != torch.int8 or integers.dim() != 2:
        raise SlimkitError(f"a quantized linear layer's weights are int8 [out, in]; got {integers.dtype} "
                           f"{list(integers.shape)}")
    out, features = integers.shape
    groups = (features + 3) // 4
    blocks = torch.nn.functional.pad(integers, (0, groups * 4 - features)).reshape(out, groups, 4)
    rows, group = torch.nonzero(blocks.abs().sum(2), as_tuple=True)  # row-major: CSR order
    if rows.numel() == 0:
        rows = group = torch.zeros(1, dtype=torch.long)
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.bincount(rows, minlength=out).cumsum(0)])
    return blocks[rows, group].reshape(-1).contiguous(), group.to(torch.int32), ptr


def unpack_blocks(weight: Tensor, group: Tensor, ptr: Tensor, features: int) -> Tensor:
    """The dense int8 weights [N, K] that `pack_blocks` packed."""
    out = ptr.numel() - 1
    rows = torch.repeat_interleave(torch.arange(out), ptr.diff())
    dense = torch.zeros(out, (features + 3) // 4, 4, dtype=torch.int8)
    dense[rows, group.long()] = weight.reshape(-1, 4)
    return dense.reshape(out, -1)[:, :features]


@torch.library.custom_op("slimkit::quant_sparse_linear", mutates_args=())
def quant_sparse_linear(x: Tensor, weight: Tensor, group: Tensor, ptr: Tensor, scale: Tensor, bias: Tensor,
                        in_step: float, in_low: int, in_high: int, features: int, layer: str) -> Tensor:
    """The operator's arithmetic (see the module's docstring), exactly: the integer sums in float64, which holds
    every int32 sum exactly, then rounded to float32 once as the kernels' int32 -> float conversion does."""
    inverse = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(in_step, dtype=torch.float32)
    q = torch.round(x * inverse).clamp(in_low, in_high)
    integers = unpack_blocks(weight, group, ptr, features)
    sums = (q.double() @ integers.double().t()).float()
    return sums * scale + bias


@quant_sparse_linear.register_fake
def _(x: Tensor, weight: Tensor, group: Tensor, ptr: Tensor, scale: Tensor, bias: Tensor, in_step: float,
      in_low: int, in_high: int, features: int, layer: str) -> Tensor:
    return x.new_empty((*x.shape[:-1], ptr.shape[0] - 1))


INPUTS = (("x", "T"), ("weight", "tensor(int8)"), ("group", "tensor(int32)"), ("ptr", "tensor(int64)"),
          ("scale", "T"), ("bias", "T"))
FLOAT_ATTRIBUTES, INT_ATTRIBUTES = ("in_step", "in_low", "in_high", "low", "high"), ("features", "clamp")


@cache
def _schema() -> None:
    """Register the node's ONNX schema (inputs, output, attributes), once: the dynamo exporter's onnxscript
    builds only nodes whose schema it finds. OpenVINO's extension checks the node's data itself."""
    from onnx.defs import OpSchema, has, register_schema

    if has("QuantSparseLinear", DOMAIN):
        return
    attribute = OpSchema.AttrType
    register_schema(OpSchema(
        "QuantSparseLinear", DOMAIN, 1, doc=__doc__ or "",
        inputs=[OpSchema.FormalParameter(name, kind) for name, kind in INPUTS],
        outputs=[OpSchema.FormalParameter("y", "T")], type_constraints=[("T", ["tensor(float)"], "float32")],
        attributes=[*(OpSchema.Attribute(a, attribute.FLOAT) for a in FLOAT_ATTRIBUTES),
                    *(OpSchema.Attribute(a, attribute.INT) for a in INT_ATTRIBUTES),
                    OpSchema.Attribute("layer", attribute.STRING)]))


def _onnx_quant_sparse_linear(x: Any, weight: Any, group: Any, ptr: Any, scale: Any, bias: Any, in_step: float,
                              in_low: int, in_high: int, features: int, layer: str) -> Any:
    """One slimkit::QuantSparseLinear node (the attributes the C++ operator reads; no clamp)."""
    from onnxscript.values import Opset

    _schema()
    return Opset(DOMAIN, 1).QuantSparseLinear(x, weight, group, ptr, scale, bias, in_step=float(in_step),
                                              in_low=float(in_low), in_high=float(in_high), features=features,
                                              clamp=0, low=0.0, high=0.0, layer=layer)


TRANSLATIONS: dict[Any, Any] = {torch.ops.slimkit.quant_sparse_linear.default: _onnx_quant_sparse_linear}


class QuantSparseLinear(nn.Module):
    """A quantized linear layer as slimkit::QuantSparseLinear: its int8 weights packed in blocks of 4 input
    features (pack_blocks), its input's per-tensor 8-bit grid taken into the node, its weight steps (per output
    or one) times the input step as the output scale, its bias in the epilogue."""

    weight: Tensor  # buffers
    group: Tensor
    ptr: Tensor
    scale: Tensor
    bias: Tensor

    def __init__(self, integers: Tensor, weight_step: Tensor, bias: Tensor | None, grid: Grid, layer: str):
        super().__init__()
        step, low, high = grid
        if not step > 0 or (low, high) not in ((-128, 127), (0, 255)):
            raise SlimkitError(f"layer '{layer}': slimkit's int8 linear operator reads an 8-bit grid with zero "
                               f"point 0 and a positive step; its input quantizer has step {step}, {low} to {high}")
        out, self.features = integers.shape
        weight, group, ptr = pack_blocks(integers)
        self.grid, self.layer = grid, layer
        self.register_buffer("weight", weight)
        self.register_buffer("group", group)
        self.register_buffer("ptr", ptr)
        steps = weight_step.detach().float().reshape(-1).expand(out)
        self.register_buffer("scale", (steps * torch.tensor(step, dtype=torch.float32)).contiguous())
        self.register_buffer("bias", torch.zeros(out) if bias is None else bias.detach().float().clone())

    def forward(self, x: Tensor) -> Tensor:
        step, low, high = self.grid
        return quant_sparse_linear(x, self.weight, self.group, self.ptr, self.scale, self.bias, step, low, high,
                                   self.features, self.layer)
