"""The channel dependency graph: which channels of which layers must be removed together.

The model is traced with torch.fx and its shapes propagated on an example input. Every channel that a
conv or linear layer produces, every input channel of the network, and every zero channel that a module with
a `ZeroPadChannels` rule (slimkit.channel_rules; the zoo's option-A shortcut declares one) pads in is an
*element*. Walking the graph assigns each tensor's channel dimension a
list of elements ("slots"): element-wise ops join the elements at equal positions (residual additions, SE
gating), concatenation concatenates slot lists (index offsets come for free), flatten repeats each channel
once per spatial position, a grouped conv joins each group's inputs and outputs, and a module called twice
joins the inputs of both calls. The connected components of that union-find are the units of pruning.

Every op is classified by what it does to the channel dimension (dim 1):
- element-wise over channels (activations, dropout, spatial pooling, +, *, spatial padding and slicing):
  the slots pass through, and operands of a binary op are joined position by position;
- a reduction or normalisation over other dimensions (mean over H, W; softmax over the last dim): passes;
- a reduction, normalisation or mixing over the channel dimension (softmax(dim=1), mean(1), a full mean,
  LayerNorm over channels, matmul, transpose): refused, since removing a channel changes the others;
- a layer applied to another dimension (a Linear on the last dim of an (N, C, L) tensor): the channels pass
  through it untouched, and it is never pruned.
Removing a channel is exact only if it is dead where it is read: the walk also tracks whether removed
(zeroed) channels stay zero. An op that maps zero to something else (sigmoid, softmax over other dims, a
bias added along another dimension, adding a constant) makes them live again; a layer that reads such
channels keeps them all (their elements are fixed), so the pruned model always equals the original with
the removed channels zeroed.
Any op the walk does not understand stops it at once with an UnsupportedOpError that names the op and the
module path: a wrong model is never returned.
"""

from __future__ import annotations

import operator
from collections.abc import Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Node, Tracer
from torch.fx.node import Argument
from torch.fx.passes.shape_prop import ShapeProp

from slimkit.channel_rules import channel_rule
from slimkit.errors import UnsupportedLayerError, first_line


class UnsupportedOpError(UnsupportedLayerError):
    """The dependency graph met an op it cannot prune through."""


PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.Hardswish,
                nn.Hardsigmoid, nn.Mish, nn.ELU, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample)
DIM_MODULES = (nn.Softmax, nn.LogSoftmax, nn.Softmin)  # normalise along `dim`: fine unless it is the channels
CHANNEL_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.PReLU)  # per-channel parameters, sliced with the slots
PASS_FUNCTIONS = {F.relu, F.relu6, F.leaky_relu, F.hardtanh, F.sigmoid, F.silu, F.gelu, F.hardswish, F.dropout,
                  torch.relu, torch.sigmoid, torch.tanh, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                  F.adaptive_max_pool2d, F.interpolate}
PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "clamp", "clamp_"}
NORMALIZE_ALONG = {F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, "softmax", "log_softmax"}
REDUCE = {torch.mean, torch.sum, torch.amax, torch.amin, "mean", "sum", "amax", "amin"}
JOIN_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.mul, operator.imul, operator.truediv,
                  torch.add, torch.sub, torch.mul}
JOIN_METHODS = {"add", "add_", "sub", "mul", "mul_", "div"}
MULTIPLY = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}  # zero times anything stays zero
DIVIDE = {operator.truediv, "div"}
ZERO_TO_NONZERO = {F.sigmoid, torch.sigmoid, "sigmoid", F.hardsigmoid}
RESHAPES = {torch.flatten, "flatten", "view", "reshape"}


class _LeafTracer(Tracer):
    """torch.nn modules and modules with a channel rule (slimkit.channel_rules: option-A shortcuts) stay single
    nodes; everything else is traced through. The stack of modules being traced names where tracing failed."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, nn.Conv2d | nn.Linear) or channel_rule(m) is not None
                or super().is_leaf_module(m, qualname))

    def call_module(self, m: nn.Module, forward, args, kwargs):
        self.stack.append(f"'{self.path_of_module(m) or '<top level>'}' ({type(m).__name__})")
        result = super().call_module(m, forward, args, kwargs)
        self.stack.pop()
        return result


@dataclass
class ChannelGraph:
    """Elements, their union-find, and where each layer's channels sit."""

    parent: list[int] = field(default_factory=list)
    fixed: set[int] = field(default_factory=set)  # elements that can never be removed
    zeros: set[int] = field(default_factory=set)  # padded zero channels: no weights, no importance
    producers: dict[str, list[int]] = field(default_factory=dict)  # conv/linear name -> its output elements
    consumers: dict[str, list[int]] = field(default_factory=dict)  # conv/linear name -> its input slots
    channel_users: dict[str, list[int]] = field(default_factory=dict)  # BN/PReLU name -> its channel slots
    # modules with a ZeroPadChannels rule (option-A shortcuts): name -> (out slots, left pad, right pad)
    zero_pads: dict[str, tuple[list[int], int, int]] = field(default_factory=dict)
    modules: dict[str, nn.Module] = field(default_factory=dict)

    def new(self, count: int, *, fixed: bool = False, zero: bool = False) -> list[int]:
        ids = list(range(len(self.parent), len(self.parent) + count))
        self.parent.extend(ids)
        if fixed:
            self.fixed.update(ids)
        if zero:
            self.zeros.update(ids)
        return ids

    def find(self, e: int) -> int:
        while self.parent[e] != e:
            self.parent[e] = self.parent[self.parent[e]]
            e = self.parent[e]
        return e

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def join(self, a: list[int], b: list[int]) -> None:
        for x, y in zip(a, b, strict=True):
            self.union(x, y)

    def components(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for e in range(len(self.parent)):
            out.setdefault(self.find(e), []).append(e)
        return out

    def prunable(self) -> dict[int, list[int]]:
        """Components with at least one real channel and no fixed element."""
        fixed_roots = {self.find(e) for e in self.fixed}
        return {root: members for root, members in self.components().items()
                if root not in fixed_roots and any(m not in self.zeros for m in members)}


def _where(node: Node) -> str:
    stack = node.meta.get("nn_module_stack")
    path = list(stack)[-1] if stack else ""
    return f"{node.format_node()} (in module '{path or '<top level>'}')"


def _shape(node: object) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _carried(node: Node, channels: list[int] | None) -> list[int]:
    """The channel slots of `node`'s input, which a layer, a BatchNorm or a channel rule needs."""
    if channels is None:
        raise UnsupportedOpError(f"cannot prune through {_where(node)}: its input carries no channels")
    return channels


def _constant(node: Node, value: Argument) -> int | float | None:
    """A bound of `node` (clamp's min or max): a number, or None when it has none."""
    if value is None or isinstance(value, int | float):
        return value
    raise UnsupportedOpError(f"cannot prune through {_where(node)}: its bound {value} is not a constant number")


def _dim(node: Node, value: Argument) -> int | None:
    """The `dim` argument of `node`: an int, or None when it has none."""
    if value is None or isinstance(value, int):
        return value
    raise UnsupportedOpError(f"cannot prune through {_where(node)}: its dimension {value} is not a constant int")


def _dims(node: Node, value: Argument) -> list[int] | None:
    """The `dim` argument of a reduction: one int or several, or None (every dimension)."""
    if value is None:
        return None
    dims = []
    for d in value if isinstance(value, tuple | list) else [value]:
        dim = _dim(node, d)
        if dim is None:
            raise UnsupportedOpError(f"cannot prune through {_where(node)}: its dimensions {value} are not ints")
        dims.append(dim)
    return dims


def build_graph(model: nn.Module, example: Tensor, fixed_modules: Collection[str] = frozenset()) -> ChannelGraph:
    """Trace `model` on `example` and build its channel graph. Outputs of `fixed_modules` are never pruned."""
    tracer = _LeafTracer()
    try:
        traced = GraphModule(model, tracer.trace(model))
    except Exception as exc:  # torch.fx raises many types on untraceable code
        where = tracer.stack[-1] if tracer.stack else f"'<top level>' ({type(model).__name__})"
        raise UnsupportedOpError(f"cannot trace module {where} with torch.fx ({type(exc).__name__}: "
                                 f"{first_line(exc)}); for transformer blocks use "
                                 f"slimkit.channels.prune_heads_and_neurons") from None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(traced).propagate(example)
    except RuntimeError as exc:
        cause = exc.__cause__ or exc
        raise UnsupportedOpError(f"the model does not run on the example input of shape {tuple(example.shape)}: "
                                 f"{cause}") from None
    finally:
        model.train(was_training)
    graph = ChannelGraph()
    slots: dict[Node, list[int] | None] = {}
    walker = _Walker(graph, traced, slots, fixed_modules)
    for node in traced.graph.nodes:
        slots[node] = walker.visit(node)
        walker.track(node)
    return graph


class _Walker:
    def __init__(self, graph: ChannelGraph, traced: GraphModule, slots: dict[Node, list[int] | None],
                 fixed_modules: Collection[str]):
        self.graph, self.traced, self.slots, self.fixed_modules = graph, traced, slots, fixed_modules
        self.live: dict[Node, str] = {}  # node -> the op after which removed (zero) channels are non-zero

    def track(self, node: Node) -> None:
        """Record whether removed channels are still zero after `node` (see the module docstring)."""
        if self.slots.get(node) is None or node.op == "placeholder":
            return
        inputs = [a for a in node.all_input_nodes if self.slots.get(a) is not None]
        inherited = next((self.live[a] for a in inputs if a in self.live), None)
        if node.op == "call_module":
            reason = self.module_liveness(node, inherited)
        else:
            reason = self.function_liveness(node, inputs, inherited)
        if reason is not None:
            self.live[node] = reason

    def module_liveness(self, node: Node, inherited: str | None) -> str | None:
        """Where removed channels became non-zero, after a module: None when it zeroes them again."""
        module = self.traced.get_submodule(str(node.target))  # a call_module node's target is the module's name
        if isinstance(module, nn.Linear) and str(node.target) not in self.graph.producers:
            return None if module.bias is None else _where(node)
        if isinstance(module, nn.Conv2d | nn.Linear | nn.BatchNorm1d | nn.BatchNorm2d):
            return None  # removed rows, bias, gamma and beta are all zeroed
        if isinstance(module, (nn.Sigmoid, nn.Hardsigmoid, *DIM_MODULES)):
            return _where(node)
        return inherited

    def function_liveness(self, node: Node, inputs: list[Node], inherited: str | None) -> str | None:
        """Where removed channels became non-zero, after a function or method call."""
        target = node.target
        if target in ZERO_TO_NONZERO or target in NORMALIZE_ALONG:
            return _where(node)
        if target in ("clamp", "clamp_"):
            low = _constant(node, node.kwargs.get("min", node.args[1] if len(node.args) > 1 else None))
            high = _constant(node, node.kwargs.get("max", node.args[2] if len(node.args) > 2 else None))
            return _where(node) if (low is not None and low > 0) or (high is not None and high < 0) else inherited
        if target in MULTIPLY:
            clean = [a for a in inputs if a not in self.live]
            return None if clean else inherited
        if target in DIVIDE:
            first = node.args[0]
            return self.live.get(first) if isinstance(first, Node) else inherited
        if target in JOIN_FUNCTIONS or target in JOIN_METHODS:  # additions: every term must be zero
            constants = [a for a in node.args if not isinstance(a, Node) or self.slots.get(a) is None]
            return _where(node) if any(c != 0 for c in constants if isinstance(c, int | float)) or any(
                isinstance(c, Node) for c in constants) else inherited
        if target is F.pad and node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0) not in (0, None):
            return _where(node)
        return inherited

    def slot(self, arg: object) -> list[int] | None:
        return self.slots.get(arg) if isinstance(arg, Node) else None

    def visit(self, node: Node) -> list[int] | None:
        shape = _shape(node)
        if node.op == "placeholder":
            return self.graph.new(shape[1], fixed=True) if shape and len(shape) >= 2 else None
        if node.op == "output":
            for arg in node.all_input_nodes:
                for e in self.slot(arg) or []:
                    self.graph.fixed.add(e)
            return None
        if node.op in ("call_function", "call_method"):
            return self.function(node, shape)
        if shape is None or len(shape) < 2:
            return None  # sizes, scalars and losses carry no channels
        if node.op == "call_module":
            return self.module(node, self.traced.get_submodule(str(node.target)), shape)
        raise UnsupportedOpError(f"cannot prune through {_where(node)}: {node.op} nodes are not supported")

    def module(self, node: Node, module: nn.Module, shape: tuple[int, ...]) -> list[int] | None:
        name = str(node.target)
        inp = self.slot(node.args[0])
        self.graph.modules[name] = module
        if isinstance(module, nn.Conv2d | nn.Linear):
            return self.layer(node, name, module, inp)
        if isinstance(module, CHANNEL_MODULES):
            if isinstance(module, nn.PReLU) and module.num_parameters == 1:
                return inp
            inp = _carried(node, inp)
            self.graph.channel_users.setdefault(name, inp)
            self.graph.join(self.graph.channel_users[name], inp)
            return inp
        if isinstance(module, nn.Flatten):
            return self.flatten(node, inp, shape)
        if (rule := channel_rule(module)) is not None:
            left, right = rule.pads(module)
            out = self.graph.new(left, zero=True) + _carried(node, inp) + self.graph.new(right, zero=True)
            self.graph.zero_pads[name] = (out, left, right)
            return out
        if isinstance(module, PASS_MODULES):
            return inp
        if isinstance(module, DIM_MODULES):
            return self.along(node, _dim(node, module.dim), inp, len(_shape(node.args[0]) or ()))
        raise UnsupportedOpError(f"cannot prune through module '{name}' ({type(module).__name__}): its channel "
                                 f"behaviour is unknown; exclude the model or replace the layer")

    def layer(self, node: Node, name: str, module: nn.Conv2d | nn.Linear,
              inp: list[int] | None) -> list[int] | None:
        in_shape = _shape(node.args[0]) or ()
        if isinstance(module, nn.Linear) and len(in_shape) > 2:
            return inp  # applied to the last dimension, not the channels (dim 1): they pass through untouched
        if isinstance(module, nn.Linear) and (inp is None or len(inp) != module.in_features):
            raise UnsupportedOpError(f"cannot prune through linear '{name}': it is applied to a tensor whose "
                                     f"last dimension is not its channel dimension")
        inp = _carried(node, inp)
        if node.args[0] in self.live:  # channels that are not zero where removed: this layer keeps them all
            self.graph.fixed.update(inp)
        if name in self.graph.consumers:  # a module called again: both calls share its input channels
            self.graph.join(self.graph.consumers[name], inp)
        else:
            self.graph.consumers[name] = inp
        if name not in self.graph.producers:
            count = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
            self.graph.producers[name] = self.graph.new(count, fixed=name in self.fixed_modules)
        out = self.graph.producers[name]
        groups = getattr(module, "groups", 1)
        if groups > 1:
            per_in, per_out = len(inp) // groups, len(out) // groups
            for g in range(groups):
                members = inp[g * per_in:(g + 1) * per_in] + out[g * per_out:(g + 1) * per_out]
                for e in members[1:]:
                    self.graph.union(members[0], e)
        return out

    def flatten(self, node: Node, inp: list[int] | None, shape: tuple[int, ...]) -> list[int] | None:
        in_shape = _shape(node.args[0])
        if inp is None or in_shape is None:
            return None
        if len(in_shape) == len(shape) and in_shape[1] == shape[1]:
            return inp
        if len(shape) >= 2 and shape[:2] == in_shape[:2]:
            return inp  # regroups dims after the channels only: each channel keeps its own values
        per_sample = 1
        for d in in_shape[2:]:
            per_sample *= d
        if len(shape) == 2 and shape[1] == in_shape[1] * per_sample:
            return [e for e in inp for _ in range(per_sample)]  # channel-major, as torch.flatten lays it out
        if shape[1] == in_shape[1] and all(d == 1 for d in (*shape[2:], *in_shape[2:])):
            return inp  # (N, C) <-> (N, C, 1, 1), as SE blocks reshape
        raise UnsupportedOpError(f"cannot prune through {_where(node)}: a reshape that mixes the channel "
                                 f"dimension with others")

    def keeps_channels(self, node: Node) -> bool:
        """Whether an indexing op takes every sample and every channel (slicing only later dimensions)."""
        index = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        ndim = len(_shape(node.args[0]) or ())
        effective: list[object] = []
        for entry in index:
            effective += [slice(None)] * (ndim - len(index) + 1) if entry is Ellipsis else [entry]
        return len(effective) >= 1 and all(e == slice(None) for e in [*effective, slice(None)][:2])

    def along(self, node: Node, dim: int | None, inp: list[int] | None, ndim: int) -> list[int] | None:
        """An op that normalises along `dim`: exact when that is not the channel dimension."""
        if dim is None or (dim % max(ndim, 1)) == 1:
            raise UnsupportedOpError(f"cannot prune through {_where(node)}: it normalises over the channel "
                                     f"dimension, so removing a channel changes the others")
        return inp

    def reduction(self, node: Node, inp: list[int] | None) -> list[int] | None:
        """mean/sum/amax over `dim`: exact when the channel dimension is kept."""
        in_shape = _shape(node.args[0]) or ()
        dim = _dims(node, node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None))
        dims = {d % len(in_shape) for d in dim} if dim is not None else set(range(len(in_shape)))
        keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        if inp is not None and (1 in dims or (0 in dims and not keepdim)):
            raise UnsupportedOpError(f"cannot prune through {_where(node)}: it reduces over the channel (or batch) "
                                     f"dimension, so removing a channel changes the result")
        return inp

    def function(self, node: Node, shape: tuple[int, ...] | None) -> list[int] | None:
        target = node.target
        first = self.slot(node.args[0]) if node.args else None
        if target in REDUCE:
            kept = self.reduction(node, first)
            return kept if shape is not None and len(shape) >= 2 else None
        if shape is None or len(shape) < 2:
            return None  # sizes and scalars that no channel feeds
        if target in NORMALIZE_ALONG:
            dim = _dim(node, node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None))
            return self.along(node, dim, first, len(_shape(node.args[0]) or ()))
        if target in JOIN_FUNCTIONS or target in JOIN_METHODS:
            return self.join(node, shape)
        passes = target in PASS_FUNCTIONS or target in PASS_METHODS
        if passes and first is not None and len(first) == shape[1]:
            return first
        if target in RESHAPES:
            return self.flatten(node, first, shape)
        return self.selection(node, first, shape)

    def join(self, node: Node, shape: tuple[int, ...]) -> list[int]:
        """An element-wise op of several tensors (+, *, ...): operands' channels are joined position by
        position."""
        args = [a for a in node.args if isinstance(a, Node)]
        ranks = {len(_shape(a) or ()) for a in args if self.slot(a) is not None}
        if ranks - {len(shape)}:
            raise UnsupportedOpError(f"cannot prune through {_where(node)}: an operand of another rank "
                                     f"broadcasts across the channel dimension")
        operands = [s for s in (self.slot(a) for a in args) if s is not None and len(s) == shape[1]]
        for other in operands[1:]:
            self.graph.join(operands[0], other)
        if operands:
            return operands[0]
        raise UnsupportedOpError(f"cannot prune through {_where(node)}: no operand carries its channels")

    def selection(self, node: Node, first: list[int] | None, shape: tuple[int, ...]) -> list[int]:
        """Ops that select or pad along dimensions: concatenation over the channels, indexing and padding
        after them; anything else is an op the walk does not understand."""
        target = node.target
        if target is torch.cat or target == "cat":
            tensors, dim = node.args[0], node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            parts = [self.slot(t) for t in tensors] if isinstance(tensors, list | tuple) else [None]
            carried = [p for p in parts if p is not None]
            if dim == 1 and len(carried) == len(parts):
                return [e for p in carried for e in p]
        if target is operator.getitem and first is not None and self.keeps_channels(node):
            return first  # slicing after the channel dimension, as option-A shortcuts do
        pad = node.args[1] if len(node.args) > 1 else None
        if target is F.pad and first is not None and isinstance(pad, list | tuple) and len(pad) <= 2 * (len(shape) - 2):
            return first  # spatial padding only
        raise UnsupportedOpError(f"cannot prune through {_where(node)}: slimkit does not know how this op "
                                 f"moves channels")
