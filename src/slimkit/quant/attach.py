"""Quantizing a layer in place: a parametrization quantizes its weight (after any pruning mask, so the two
compose: W -> Q(W * M)) and a forward pre-hook quantizes its input. The layer stays the same module.

A quantized layer may wait inactive (weight and input pass through unchanged) until its stage starts, so
that a recipe can prune and fine-tune in float first and quantize after, with the quantizers' parameters in
the optimizer from the start."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.layers import adapter_of, parametrization_chain
from slimkit.parametrized import add_parametrization
from slimkit.quant.quantizers import LevelQuantizer, UniformQuantizer


class WeightQuantization(nn.Module):
    """Parametrization: weight -> quantizer(weight), applied to the weight as (out, in, ...) so per-channel
    steps follow output channels whatever the layer's storage (HF's Conv1D stores (in, out)). It is the
    layer's quantization record: `bits` of its weight and `input_bits` of its input quantizer."""

    def __init__(self, quantizer: nn.Module, bits: int, transposed: bool = False, input_bits: int = 32):
        super().__init__()
        self.quantizer = quantizer
        self.bits = bits
        self.input_bits = input_bits
        self.transposed = transposed
        self.active = True  # False before the quantize stage starts (its state_dict keeps that): weight passes through

    def forward(self, weight: Tensor) -> Tensor:
        if not self.active:
            return weight
        if self.transposed:
            return self.quantizer(weight.t()).t()
        return self.quantizer(weight)


def _quantize_input(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    quantization, quantizer = weight_quantization(module), input_quantizer_of(module)
    if quantization is None or quantizer is None:
        raise SlimkitError(f"{type(module).__name__} runs the input-quantizing hook but holds no quantizers")
    if not quantization.active:
        return args
    return (quantizer(args[0]), *args[1:])


def quantize_layer(module: nn.Module, weight_quantizer: nn.Module, input_quantizer: nn.Module,
                   bits: int, input_bits: int) -> None:
    adapter = adapter_of(module)
    transposed = adapter is not None and adapter.transposed
    add_parametrization(module, "weight", WeightQuantization(weight_quantizer, bits, transposed, input_bits))
    module.input_quantizer = input_quantizer
    module.register_forward_pre_hook(_quantize_input)


def weight_quantization(module: nn.Module) -> WeightQuantization | None:
    chain = parametrization_chain(module, "weight")
    if chain is None:
        return None
    return next((p for p in chain if isinstance(p, WeightQuantization)), None)


def quantization_of(module: nn.Module, where: str) -> WeightQuantization:
    """`weight_quantization` of a layer that `quantize_layer` quantized: one without is an error naming it."""
    quantization = weight_quantization(module)
    if quantization is None:
        raise SlimkitError(f"{where} ({type(module).__name__}) has no weight quantizer")
    return quantization


def input_quantizer_of(module: nn.Module) -> nn.Module | None:
    """The quantizer `quantize_layer` put on the layer's input, or None for a layer without one."""
    quantizer = getattr(module, "input_quantizer", None)
    return quantizer if isinstance(quantizer, nn.Module) else None


def quantizer_parameters(module: nn.Module) -> list[nn.Parameter]:
    wq = weight_quantization(module)
    params = list(wq.quantizer.parameters()) if wq is not None else []
    quantizer = input_quantizer_of(module)
    if isinstance(quantizer, UniformQuantizer | LevelQuantizer):
        params += list(quantizer.parameters())
    return params
