"""The engine form of a model captured by torch.export (a transformer: tuple or dict example): its quantized linear
layers as slimkit::QuantSparseLinear where chosen, every other layer the model's own.

The TorchScript path (form.engine_form) rewrites a torch.fx graph, which HF transformers do not pass; here each
chosen layer (an 8-bit quantized nn.Linear or registered linear map such as HF's Conv1D, with a per-tensor 8-bit
input quantizer) is swapped, as a module, for a QuantSparseLinear holding its integer weights in blocks of 4 input
features, its input grid and its bias; torch.export then records the custom op, and the dynamo exporter writes it
as the slimkit node (quant_linear.TRANSLATIONS). A candidate is a layer with a zero block of 4 input features in
its integer weights (`prune: {block: 4}` trains for this). Whether the operator is faster than OpenVINO's own int8
kernel for a layer is measured (layer_choice); `dense_alone` is that layer as OpenVINO runs it otherwise (Q/DQ on
its input, its int8 weights behind one dequantize), timed against `QuantSparseLinear` alone.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.layers import adapter_of, canonical_weight
from slimkit.quant.attach import input_quantizer_of, weight_quantization
from slimkit.quant.frozen import FrozenQuantizer, FrozenWeight
from slimkit.quant.quantizers import UniformQuantizer
from slimkit.runtime.engine.operators import Grid
from slimkit.runtime.engine.quant_linear import OPERATOR, QuantSparseLinear


def _is_linear_map(module: nn.Module) -> bool:
    adapter = adapter_of(module)
    return adapter is not None and adapter.linear_map and not isinstance(module, nn.Conv2d)


def _quantizers(module: nn.Module) -> tuple[UniformQuantizer, UniformQuantizer] | None:
    """(weight quantizer, input quantizer) of an active 8-bit uniformly quantized layer, else None."""
    quantization, given = weight_quantization(module), input_quantizer_of(module)
    if quantization is None or not quantization.active or not _is_linear_map(module):
        return None
    weight = quantization.quantizer
    if not isinstance(weight, UniformQuantizer) or not isinstance(given, UniformQuantizer) or weight.bits != 8:
        return None
    return weight, given


def integers_of(module: nn.Module, name: str) -> tuple[Tensor, Tensor]:
    """The layer's int8 weights [out, in] and their steps (|s|: a negative step's channel is the grid of |s| with
    its integers negated, as quant/frozen writes it), from its eval-mode quantized weight k * s."""
    found = _quantizers(module)
    if found is None:
        raise SlimkitError(f"layer '{name}' is not an 8-bit quantized linear layer")
    with torch.no_grad():
        values = canonical_weight(module).detach().float()
        step = found[0].step.detach().float().abs().clamp_min(1e-12)
        step = step.reshape(-1, 1) if step.numel() > 1 else step.reshape(())
        integers = torch.round(values / step)
    if not torch.equal(integers * step, values) or integers.abs().max() > 128 or integers.max() > 127:
        raise SlimkitError(f"layer '{name}': its quantized weight is not on its own 8-bit grid")
    return integers.to(torch.int8), step.reshape(-1)


def input_grid(module: nn.Module, name: str) -> Grid:
    """The per-tensor 8-bit grid of the layer's input quantizer: (step, qmin, qmax)."""
    found = _quantizers(module)
    if found is None or found[1].channels != 1 or found[1].bits != 8 or not bool(found[1].initialized):
        raise SlimkitError(f"layer '{name}': slimkit's int8 linear operator needs a calibrated per-tensor 8-bit input "
                           f"quantizer")
    return float(found[1].step.detach().reshape(())), found[1].qmin, found[1].qmax


def linear_candidates(model: nn.Module) -> dict[str, str]:
    """{layer: operator} for every 8-bit quantized linear layer of `model` whose integer weights hold a zero block
    of 4 consecutive input features (something for the block-sparse operator to skip)."""
    found: dict[str, str] = {}
    for name, module in model.named_modules():
        if _quantizers(module) is None:
            continue
        integers, _ = integers_of(module, name)
        features = integers.shape[1]
        blocks = F.pad(integers.abs().int(), (0, -features % 4)).reshape(integers.shape[0], -1, 4).sum(2)
        if bool((blocks == 0).any()):
            found[name] = OPERATOR
    return found


def as_operator(module: nn.Module, name: str) -> QuantSparseLinear:
    """The layer as slimkit::QuantSparseLinear (see quant_linear: the same outputs up to float rounding)."""
    integers, step = integers_of(module, name)
    bias = getattr(module, "bias", None)
    return QuantSparseLinear(integers, step, bias if isinstance(bias, Tensor) else None, input_grid(module, name),
                             name)


def swap_linears(model: nn.Module, chosen: Collection[str]) -> dict[str, dict[str, Any]]:
    """Put each chosen candidate of `model` in its operator form, in place; a line per candidate: what it became,
    and for one left to OpenVINO (not chosen, or refused here) why."""
    lines: dict[str, dict[str, Any]] = {}
    for name in linear_candidates(model):
        if name not in chosen:
            lines[name] = {"layer": name, "engine": "OpenVINO", "reason": "not chosen"}
            continue
        try:
            model.set_submodule(name, as_operator(model.get_submodule(name), name))
            lines[name] = {"layer": name, "engine": OPERATOR}
        except SlimkitError as exc:
            lines[name] = {"layer": name, "engine": "OpenVINO", "reason": str(exc)}
    return lines


class DenseInt8Linear(nn.Module):
    """A quantized linear layer as OpenVINO runs it without slimkit's operator: its input on its grid (Q/DQ), its
    int8 weights behind one dequantize, a matrix multiply and the bias, which OpenVINO fuses into its int8
    FullyConnected. Its quantizers are frozen, so it exports as it is (no int8 graph)."""

    def __init__(self, module: nn.Module, name: str):
        super().__init__()
        found = _quantizers(module)
        if found is None:
            raise SlimkitError(f"layer '{name}' is not an 8-bit quantized linear layer")
        self.input_quantizer = FrozenQuantizer(found[1], f"{name}.input_quantizer")
        self.weight = FrozenWeight(found[0], f"{name}.weight", canonical_weight(module).detach(), False)
        bias = getattr(module, "bias", None)
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if isinstance(bias, Tensor) else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input_quantizer(x), self.weight(x), self.bias)
