"""Quantizing a layer in place: a parametrization quantizes its weight (after any pruning mask, so the two
compose: W -> Q(W * M)) and a forward pre-hook quantizes its input. The layer stays the same module.

A quantized layer may wait inactive (weight and input pass through unchanged) until its stage starts, so
that a recipe can prune and fine-tune in float first and quantize after, with the quantizers' parameters in
the optimizer from the start."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils import parametrize

from slimkit.layers import adapter_of
from slimkit.parametrized import add_parametrization
from slimkit.quant.quantizers import LevelQuantizer, UniformQuantizer


class WeightQuantization(nn.Module):
    """Parametrization: weight -> quantizer(weight), applied to the weight as (out, in, ...) so per-channel
    steps follow output channels whatever the layer's storage (HF's Conv1D stores (in, out))."""

    def __init__(self, quantizer: nn.Module, bits: int, transposed: bool = False):
        super().__init__()
        self.quantizer = quantizer
        self.bits = bits
        self.transposed = transposed
        self.active = True  # False before the quantize stage starts (its state_dict keeps that): weight passes through

    def forward(self, weight: Tensor) -> Tensor:
        if not self.active:
            return weight
        if self.transposed:
            return self.quantizer(weight.t()).t()
        return self.quantizer(weight)


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    if not weight_quantization(module).active:
        return args
    return (module.input_quantizer(args[0]), *args[1:])


def quantize_layer(module: nn.Module, weight_quantizer: nn.Module, input_quantizer: nn.Module,
                   bits: int, input_bits: int) -> None:
    adapter = adapter_of(module)
    transposed = adapter is not None and adapter.transposed
    add_parametrization(module, "weight", WeightQuantization(weight_quantizer, bits, transposed))
    module.input_quantizer = input_quantizer
    module.input_bits = input_bits
    module.register_forward_pre_hook(_quantize_input)


def weight_quantization(module: nn.Module) -> WeightQuantization | None:
    if not parametrize.is_parametrized(module, "weight"):
        return None
    return next((p for p in module.parametrizations.weight if isinstance(p, WeightQuantization)), None)


def quantizer_parameters(module: nn.Module) -> list[nn.Parameter]:
    wq = weight_quantization(module)
    params = list(wq.quantizer.parameters()) if wq is not None else []
    if isinstance(getattr(module, "input_quantizer", None), UniformQuantizer | LevelQuantizer):
        params += list(module.input_quantizer.parameters())
    return params
