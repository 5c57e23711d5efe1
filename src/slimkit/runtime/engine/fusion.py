"""torch.fx passes over a model in engine form. `fuse_epilogues` fuses into each operator what alone reads its
output, so no OpenVINO node (with its layout reorders) sits between two slimkit nodes; `link_operators` lets
an operator hand the next one its input in the form the next one computes on (sign bits, integers).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from slimkit.binary.layers import BinaryConv2d, BinaryLinear
from slimkit.errors import SlimkitError
from slimkit.quant.quantizers import UniformQuantizer
from slimkit.runtime.engine.operator_modules import EngineBinaryConv2d, EngineConv, EngineQuantSparseConv2d


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
        if not isinstance(low, int | float) or not isinstance(high, int | float):
            raise SlimkitError(f"{node.format_node()}: hardtanh's bounds are numbers, not {low!r} and {high!r}")
        return (float(low), float(high))
    return None


def _engine_calls(graph: fx.Graph, modules: dict[str, nn.Module]) -> list[fx.Node]:
    return [n for n in graph.nodes if n.op == "call_module" and isinstance(modules[str(n.target)], EngineConv)]


class _Epilogue:
    """Walks the single-reader chain after one engine conv, fusing each op the operator can take."""

    def __init__(self, conv: fx.Node, modules: dict[str, nn.Module]):
        self.conv, self.modules = conv, modules
        layer = modules[str(conv.target)]
        if not isinstance(layer, EngineConv):  # _engine_calls picks these nodes
            raise SlimkitError(f"{conv.target} is not an engine operator to fuse into")
        self.layer = layer
        self.tail: fx.Node = conv
        self.residual: fx.Node | None = None
        self.users = list(conv.users)

    def _advance(self) -> None:
        self.tail, self.users = self.users[0], list(self.users[0].users)

    def _sole_module(self) -> nn.Module | None:
        users = self.users
        return self.modules.get(str(users[0].target)) if len(users) == 1 and users[0].op == "call_module" else None

    def batchnorm(self) -> None:
        bn = self._sole_module()
        if isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None and bn.running_var is not None:
            self.layer.fuse_batchnorm(bn, str(self.users[0].target))
            self._advance()

    def pool(self) -> bool:
        """A max pool the operator can take; True when fused."""
        pool = self._sole_module()
        if pool is not None and self.layer.fuse_pool(pool, str(self.users[0].target)):
            self._advance()
            return True
        return False

    def quantizer(self) -> None:
        quantizer = self._sole_module()
        if quantizer is not None and self.layer.fuse_quantizer(quantizer, str(self.users[0].target)):
            self._advance()

    def residual_add(self) -> None:
        """An add of a tensor of the output's own shape (so a broadcast add is never read as a residual)."""
        if len(self.users) != 1:
            return
        add = self.users[0]
        operands = [a for a in add.args if isinstance(a, fx.Node)]
        if (add.op != "call_function" or add.target not in (operator.add, torch.add) or len(add.args) != 2
                or add.kwargs or len(operands) != 2 or operands[0] is operands[1]):
            return
        if _shape(operands[0]) is None or _shape(operands[0]) != _shape(operands[1]):
            return
        self.residual = next(a for a in operands if a is not self.tail)
        self.layer.fuse_residual(add.name)
        self._advance()

    def clamp(self) -> None:
        bounds = _clamp_bounds(self.users[0], self.modules) if len(self.users) == 1 else None
        if bounds is not None:
            self.layer.fuse_clamp(*bounds, _label(self.users[0]))
            self._advance()

    def replace(self, graph: fx.Graph) -> None:
        """One call of the operator in place of the chain it absorbed."""
        if self.tail is self.conv:
            return
        args = (self.conv.args[0], *([self.residual] if self.residual is not None else []))
        with graph.inserting_before(self.tail):
            fused = graph.call_module(str(self.conv.target), args)
        fused.meta = dict(self.tail.meta)  # its output is the tail's: a later layer's residual check reads this shape
        self.tail.replace_all_uses_with(fused)
        for dead in reversed(_chain(self.conv, self.tail)):
            graph.erase_node(dead)


def _shape(node: fx.Node) -> Any:
    return getattr(node.meta.get("tensor_meta"), "shape", None)


def fuse_epilogues(model: nn.Module, input_shape: Sequence[int]) -> fx.GraphModule:
    """Fuse into each engine conv, in this order, what alone reads its output: an eval BatchNorm with
    running statistics, a 2x2 max pool and a BatchNorm after it (binary convs), a quantizer, an add of a tensor
    of the output's own shape (shapes propagated from an input of `input_shape`), then a ReLU/hardtanh, then a
    quantizer. Each fused op is one pass over a batch's activations saved, and no OpenVINO node (with its
    layout reorders) between two slimkit nodes."""
    traced = fx.GraphModule(model, _LeafTracer().trace(model))
    graph = traced.graph
    modules = dict(model.named_modules())
    for conv in _engine_calls(graph, modules):
        source = conv.args[0]
        if isinstance(source, fx.Node) and source.op == "call_module":
            # the operator rounds its input onto this quantizer's grid itself (idempotent on values already on
            # it), and reads the quantizer's output for now, so that an operator before it can fuse the
            # quantizer as its own last step (see the end): no quantize node between two operators
            modules[str(conv.target)].fuse_input(modules[str(source.target)], str(source.target))
    ShapeProp(traced).propagate(torch.zeros(1, *input_shape))
    for conv in _engine_calls(graph, modules):
        epilogue = _Epilogue(conv, modules)
        epilogue.batchnorm()
        if epilogue.pool():  # a binary conv's 2x2 max pool, then the BatchNorm after it
            epilogue.batchnorm()
        epilogue.quantizer()
        epilogue.residual_add()
        epilogue.clamp()
        epilogue.quantizer()
        epilogue.replace(graph)
    for conv in _engine_calls(graph, modules):
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
    own = (first, second)
    producer.replace_all_uses_with(first, delete_user_cb=lambda user: user not in own)
    for reader in readers:
        reader.args = (second, *reader.args[1:])
    return first


def link_operators(traced: fx.GraphModule) -> dict[str, str]:
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
