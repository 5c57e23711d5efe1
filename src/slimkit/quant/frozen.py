"""Trained uniform quantizers with their grids as constants, for torch.export.

A UniformQuantizer's forward branches on its buffers (whether it was initialised, whether its grid is signed),
which torch.export cannot trace: its buffers are fake tensors there. And `torch.fake_quantize_*`, which the
TorchScript exporter writes as QuantizeLinear/DequantizeLinear, has no fake-tensor kernel in torch 2.13. A
FrozenQuantizer computes the same eval-mode values with the grid fixed at capture (bounds as Python integers)
through the quantize/dequantize pair torch.export's quantization path uses (`quantized_decomposed`), which the
dynamo ONNX exporter writes as QuantizeLinear/DequantizeLinear and OpenVINO reads as FakeQuantize: both engines
then run the quantized layers on int8 kernels.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.layers import canonical_weight
from slimkit.quant.attach import weight_quantization
from slimkit.quant.quantizers import UniformQuantizer


def _ops() -> Any:
    import torch.ao.quantization.fx._decomposed  # registers torch.ops.quantized_decomposed

    return torch.ops.quantized_decomposed


class FrozenQuantizer(nn.Module):
    """The eval forward of an initialised UniformQuantizer: round(clamp(x / step, qmin, qmax)) * step, per tensor
    or per output channel (dim 0), with round half to even as torch.fake_quantize_* rounds."""

    step: Tensor  # buffers
    zero: Tensor

    def __init__(self, quantizer: UniformQuantizer, name: str):
        super().__init__()
        if not bool(quantizer.initialized):
            raise SlimkitError(f"quantizer '{name}' was never calibrated or trained: its eval forward would set its "
                               f"step from the first input it sees; calibrate the model before exporting it")
        self.qmin, self.qmax, self.channels = quantizer.qmin, quantizer.qmax, quantizer.channels
        self.dtype = torch.int8 if self.qmin < 0 else torch.uint8
        step = quantizer.step.detach().float().abs().clamp_min(1e-12)  # check_exportable: |s| is exact
        self.scale = float(step.reshape(-1)[0])
        self.register_buffer("step", step)
        self.register_buffer("zero", torch.zeros(self.channels, dtype=torch.int64))

    def forward(self, x: Tensor) -> Tensor:
        ops = _ops()
        if self.channels > 1:
            q = ops.quantize_per_channel.default(x, self.step, self.zero, 0, self.qmin, self.qmax, self.dtype)
            return ops.dequantize_per_channel.default(q, self.step, self.zero, 0, self.qmin, self.qmax, self.dtype)
        q = ops.quantize_per_tensor.default(x, self.scale, 0, self.qmin, self.qmax, self.dtype)
        return ops.dequantize_per_tensor.default(q, self.scale, 0, self.qmin, self.qmax, self.dtype)


class FrozenWeight(FrozenQuantizer):
    """A weight quantizer whose integers are fixed at capture: the exported graph holds them as int8 constants
    behind one dequantize (DequantizeLinear), as quantized ONNX models store weights. Quantizing the float weight
    in the graph instead would let an engine round a weight that lies within a float rounding of a half step to
    the other integer (onnxruntime divides by the step where torch multiplies by its inverse): found on a
    QAT-trained GPT-2, whose one flipped weight moved the logits by 1e-3."""

    integers: Tensor  # a buffer

    def __init__(self, quantizer: UniformQuantizer, name: str, values: Tensor, transposed: bool):
        super().__init__(quantizer, name)
        step = self.step.reshape(-1, *[1] * (values.ndim - 1)) if self.channels > 1 else self.step.reshape(())
        integers = torch.round(values / step)
        if not torch.equal(integers * step, values):  # the eager quantizer's output is k * step exactly
            raise SlimkitError(f"weight quantizer '{name}': the quantized weight is not on its own grid")
        self.transposed = transposed  # stored (in, out), as HF's Conv1D: kept so, dequantized along dim 1
        self.register_buffer("integers", (integers.t() if transposed else integers).to(self.dtype).contiguous())

    def forward(self, x: Tensor) -> Tensor:
        """The weight as (out, in, ...), as WeightQuantization hands it over. A stored (in, out) weight comes back
        transposed, and WeightQuantization transposes it again: the two cancel in the exported graph, so the
        dequantize feeds the matrix multiply directly, which the engines fuse into an int8 kernel."""
        ops = _ops()
        if self.channels == 1:
            weight = ops.dequantize_per_tensor.default(self.integers, self.scale, 0, self.qmin, self.qmax, self.dtype)
        else:
            weight = ops.dequantize_per_channel.default(self.integers, self.step, self.zero, int(self.transposed),
                                                        self.qmin, self.qmax, self.dtype)
        return weight.t() if self.transposed else weight


def frozen_quantizers(model: nn.Module) -> nn.Module:
    """An eval-mode copy of `model` with every UniformQuantizer (input quantizers, an int8 graph's added ones) a
    FrozenQuantizer, and every quantized weight its integers (FrozenWeight); `model` is not changed."""
    frozen = copy.deepcopy(model).eval()
    weights: dict[nn.Module, tuple[Tensor, bool]] = {}  # quantizer: the weight as (out, in, ...); stored (in, out)
    for module in frozen.modules():
        quantization = weight_quantization(module)
        if quantization is not None and quantization.active and isinstance(quantization.quantizer, UniformQuantizer):
            with torch.no_grad():
                weights[quantization.quantizer] = (canonical_weight(module).detach(), quantization.transposed)
    for name, module in list(frozen.named_modules()):
        if isinstance(module, UniformQuantizer):
            frozen.set_submodule(name, FrozenWeight(module, name, *weights[module]) if module in weights
                                 else FrozenQuantizer(module, name))
    return frozen
