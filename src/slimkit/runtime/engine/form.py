"""`engine_form`: a model with chosen layers as slimkit's operators, and which layers can be.

`candidates` lists every layer an operator can take: each binary conv, each float conv or linear layer with
zero weights, and each conv or linear layer of a quantized model's int8 graph (kept in blocks of 4 input
channels; a dense one too, which the block operator runs with every block kept). Whether an operator is
faster than OpenVINO's own kernel for that layer is not decided here: layer_choice measures it on the CPU.
`engine_form` swaps the layers it is given into their Engine* modules (operator_modules); the fusion passes
then fuse epilogues and link operators. Every other layer stays OpenVINO's own, and each candidate's line says
what it became and why.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Protocol

from torch import fx, nn
from torch.nn.utils import parametrize

from slimkit.binary.layers import BinaryConv2d, BinaryLinear
from slimkit.errors import SlimkitError, first_line
from slimkit.layers import adapter_of, canonical_weight
from slimkit.quant.attach import weight_quantization
from slimkit.quant.int8_graph import Batch, FoldedLayer, int8_form, is_quantized
from slimkit.quant.quantizers import UniformQuantizer
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
from slimkit.sparsity.masks import raw_weight


class EngineKind(Protocol):
    """An Engine* class as the choice uses it: named by its operator, and built from the layer it stands for
    (each class takes a layer type of its own, which `_operator_for` pairs it with, so the layer is Any here)."""

    @property
    def operator(self) -> str: ...

    def __call__(self, layer: Any, /) -> EngineConv: ...


Candidates = dict[str, EngineKind]  # a layer's path and the operator it can become


def _operator_for(module: nn.Module) -> EngineKind | None:
    """The operator a layer can become, or None. A quantized model's layers are judged as the int8 graph's
    FoldedLayers they become (engine_form builds that graph)."""
    if isinstance(module, BinaryConv2d):
        return EngineBinaryConv2d
    if isinstance(module, FoldedLayer) or weight_quantization(module) is not None:
        layer = module.layer if isinstance(module, FoldedLayer) else module
        if not isinstance(layer, nn.Conv2d | nn.Linear):  # a QAT layer's class is torch's parametrized subclass
            return None
        return EngineQuantSparseLinear if isinstance(layer, nn.Linear) else EngineQuantSparseConv2d
    adapter = adapter_of(module)
    linear = type(module) is nn.Linear or (adapter is not None and adapter.linear_map and type(module) is not nn.Conv2d
                                           and not isinstance(module, BinaryLinear))
    if (type(module) is not nn.Conv2d and not linear) or parametrize.is_parametrized(module):
        return None
    if not bool((canonical_weight(module) == 0).any()):  # no zero weight: nothing for a sparse operator to skip
        return None
    return EngineSparseLinear if linear else EngineSparseConv2d


def quantizers_around(model: nn.Module, name: str) -> tuple[nn.Module | None, nn.Module | None]:
    """In an int8 graph (a GraphModule), the quantizer module that feeds the layer `name` and the one that alone
    reads its output, if any: what OpenVINO's int8 kernel needs around the layer, and what the operator fuses."""
    if not isinstance(model, fx.GraphModule):
        return None, None
    modules = dict(model.named_modules())
    node = next((n for n in model.graph.nodes if n.op == "call_module" and n.target == name), None)

    def quantizer(candidate: Any) -> nn.Module | None:
        if not isinstance(candidate, fx.Node) or candidate.op != "call_module":
            return None
        module = modules.get(str(candidate.target))
        return module if isinstance(module, UniformQuantizer) else None

    if node is None:
        return None, None
    users = list(node.users)
    return quantizer(node.args[0]), quantizer(users[0]) if len(users) == 1 else None


def candidates(model: nn.Module) -> Candidates:
    """Every layer of `model` (a quantized model: of its int8 graph) that an operator can take and that has
    something for it to exploit: binary weights, zero weights, zero blocks of 4 input channels, or (int8) at
    most 4 input channels, one block group, where the operator does a dense conv's work and the network stays
    in its layout. An int8 layer must read a quantizer's output directly (the operator takes the grid into the
    node); one behind a reshape, such as a classifier after flatten, stays OpenVINO's."""
    inside = {f"{n}.layer" for n, m in model.named_modules() if isinstance(m, FoldedLayer)}
    found: Candidates = {}
    for name, module in model.named_modules():
        if name in inside:  # a FoldedLayer's own conv: the FoldedLayer is the unit
            continue
        kind = _operator_for(module)
        if kind is None or not (_has_structure(module) or _one_block_group(module)):
            continue
        graph_input = isinstance(model, fx.GraphModule) and isinstance(module, FoldedLayer)
        if not (graph_input and quantizers_around(model, name)[0] is None):
            found[name] = kind
    return found


def _one_block_group(module: nn.Module) -> bool:
    """An int8 conv of at most 4 input channels (a first layer)."""
    layer = module.layer if isinstance(module, FoldedLayer) else None
    return isinstance(layer, nn.Conv2d) and layer.in_channels <= 4


def _has_structure(module: nn.Module) -> bool:
    """Whether a layer has what an operator exploits: binary weights, zero weights, or (quantized) a zero block
    of 4 input channels."""
    kind = _operator_for(module)
    if kind is None or kind is EngineBinaryConv2d:
        return kind is not None
    if kind in (EngineQuantSparseConv2d, EngineQuantSparseLinear):  # zero blocks the float weights hold (pruned),
        weight = module.layer.weight if isinstance(module, FoldedLayer) else \
            raw_weight(module)  # not values the quantizer happens to round to 0
        return bool((block_sums(weight.detach().abs(), 4) == 0).any())
    return True  # a float candidate has zero weights by definition


def runs_slimkit_operators(model: nn.Module) -> bool:
    """Whether any layer has structure a slimkit operator exploits (so `slimkit export` makes an OpenVINO
    artifact, whose layers are then chosen by measurement): the layer rule alone, without the int8 graph,
    copy, tracing and shape propagation that engine_form does."""
    return any(_has_structure(module) for module in model.modules())


def prepared(model: nn.Module, calibration: Iterable[Batch] | None) -> nn.Module:
    """The model the operators are chosen in: an eval-mode copy, a quantized model as its int8 form (its integer
    graph calibrated on `calibration` where torch.fx traces it, see quant/int8_graph.int8_form)."""
    if is_quantized(model):
        model = int8_form(model, calibration)
    return copy.deepcopy(model).eval()


def _swap_layers(model: nn.Module, chosen: Collection[str]) -> dict[str, dict[str, Any]]:
    """Put each chosen candidate in its Engine* form, in place; a line per candidate."""
    lines: dict[str, dict[str, Any]] = {}
    for name, kind in candidates(model).items():
        if name not in chosen:
            continue
        try:
            operator = kind(model.get_submodule(name))
            operator.layer = name
            model.set_submodule(name, operator)
            lines[name] = {"layer": name, "engine": kind.operator}
        except SlimkitError as exc:
            lines[name] = {"layer": name, "engine": "OpenVINO (the training graph's ops)", "reason": str(exc)}
    return lines


def engine_form(model: nn.Module, input_shape: Sequence[int], calibration: Iterable[Batch] | None = None,
                chosen: Collection[str] | None = None) -> tuple[nn.Module, list[dict[str, Any]]]:
    """`model` (`prepared` here unless it was: a quantized model needs `calibration`) with the `chosen`
    candidates (None: every candidate) in their engine operators' form, epilogues fused, and a line per chosen
    layer saying what it became and what it absorbed. A layer the operators cannot take after all (dilated,
    grouped, 0-valued binary weights) stays the training graph's own ops, which OpenVINO runs exactly; its line
    says why."""
    model = prepared(model, calibration)
    lines = _swap_layers(model, candidates(model) if chosen is None else chosen)
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
