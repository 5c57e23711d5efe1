"""`engine_form`: which layers of a model become slimkit's operators, and the model in that form.

Every binary conv, and every conv or linear layer at least SPARSE_MIN sparse (a quantized model's: in blocks
of 4 input channels), becomes its Engine* module (operator_modules); the fusion passes then fuse epilogues
and link operators. Every other layer stays OpenVINO's own, and each layer's line says what it became and why.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn
from torch.nn.utils import parametrize

from slimkit.binary.layers import BinaryConv2d, BinaryLinear
from slimkit.errors import SlimkitError, first_line
from slimkit.layers import adapter_of, canonical_weight
from slimkit.quant.attach import weight_quantization
from slimkit.quant.int8_graph import FoldedLayer, int8_graph, is_quantized
from slimkit.runtime.engine.fusion import fuse_epilogues, link_operators
from slimkit.runtime.engine.operator_modules import (
    EngineBinaryConv2d,
    EngineConv,
    EngineQuantSparseConv2d,
    EngineQuantSparseLinear,
    EngineSparseConv2d,
    EngineSparseLinear,
)
from slimkit.sparsity.blocks import block_sums

SPARSE_MIN = 0.7  # a fixed threshold; layers are not yet timed one by one against OpenVINO's dense kernel


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


def _swap_layers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Put each layer an operator takes in its Engine* form, in place; a line per layer considered."""
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
    return lines


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
    lines = _swap_layers(model)
    if not any(isinstance(m, EngineConv) for m in model.modules()):
        return model, list(lines.values())
    try:
        traced = fuse_epilogues(model, input_shape)
    except Exception as exc:  # torch.fx fails on data-dependent control flow, among others
        raise SlimkitError(f"torch.fx could not trace the model to fuse the engine operators' epilogues: "
                           f"{type(exc).__name__}: {first_line(exc)}") from None
    reads = link_operators(traced)
    for name, line in lines.items():
        module = traced.get_submodule(name)
        if isinstance(module, EngineConv):
            line["fused"] = module.fused
        if name in reads:
            line["input"] = reads[name]
    return traced, list(lines.values())
