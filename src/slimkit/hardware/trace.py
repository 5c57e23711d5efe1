"""What the cost models read from a model: every conv and linear layer's weight as the forward pass uses it,
its output positions per sample, its bit widths, the measured density of its input channels, and which
quantizer reads its output.

A leaf module that holds a weight matrix slimkit cannot cost (an embedding, a Conv1d, a grouped conv) is an
error naming it: a cost that silently leaves layers out would flatter the model. The modules inside an opaque
one (a LUT partition, costed as a whole) are neither checked nor traced.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from slimkit.binary.layers import BinaryConv2d, BinaryLinear
from slimkit.errors import SlimkitError, UnsupportedLayerError
from slimkit.folding import BATCHNORMS, LayerTracer
from slimkit.layers import canonical_weight, known_adapter, layer_kind
from slimkit.quant.attach import input_quantizer_of, weight_quantization


def layer_bits(module: nn.Module) -> tuple[int, int]:
    """(weight bits, input bits) of a conv or linear layer: 1 for binarized operands, the quantizer's bits
    for quantized ones, 32 (float) otherwise."""
    if isinstance(module, BinaryConv2d | BinaryLinear):
        return 1, 32 if isinstance(module.input_binarizer, nn.Identity) else 1
    quantization = weight_quantization(module)
    if quantization is not None:
        return quantization.bits, quantization.input_bits
    return 32, 32


@dataclass
class LayerTrace:
    """One conv or linear layer as the cost models see it.

    `weight` is canonical, (out, in, kh, kw) or (out, in), with masks and quantizers applied; `positions` is
    the number of output positions per sample (pixels of a conv, tokens of a linear); `input_density` is the
    fraction of non-zero values each input channel (or feature) received over the calibration batches.
    """

    name: str
    module: nn.Module
    kind: str
    weight: Tensor
    positions: int
    input_shape: list[int]
    input_density: Tensor
    weight_bits: int
    input_bits: int

    @property
    def kernel(self) -> int:
        """Weights per (filter, input channel) pair: kh * kw for a conv, 1 for a linear layer."""
        return math.prod(self.weight.shape[2:])

    @property
    def macs(self) -> int:
        """Dense multiply-accumulates per sample: output positions x all weights (as metrics.count_macs)."""
        return self.positions * self.weight.numel()


def inside(name: str, opaque: Collection[str]) -> bool:
    """Whether module `name` is one of `opaque` or lies inside one."""
    return any(name == o or name.startswith(f"{o}.") for o in opaque)


def check_costable(model: nn.Module, opaque: Collection[str] = ()) -> None:
    """Refuse a model holding a weight the cost models cannot place, naming the module and its type; modules
    inside `opaque` ones are not looked at."""
    for name, module in model.named_modules():
        if "parametrizations" in name.split(".") or inside(name, opaque):
            continue
        kind = layer_kind(module)
        if kind == "conv" and getattr(module, "groups", 1) != 1:
            raise UnsupportedLayerError(f"cannot cost layer {name!r} ({type(module).__name__}, groups="
                                        f"{module.groups}): the hardware models map dense-channel convs only")
        weight = module._parameters.get("weight")
        if kind is None and weight is not None and weight.ndim >= 2:
            raise UnsupportedLayerError(f"cannot cost layer {name!r} ({type(module).__name__}): the hardware "
                                        f"models know conv and linear layers (slimkit.layers.register_layer "
                                        f"teaches slimkit a linear-like type)")


@torch.no_grad()
def trace_layers(model: nn.Module, inputs: Sequence[Tensor], opaque: Collection[str] = ()) -> list[LayerTrace]:
    """Run `model` in eval mode on each tensor of `inputs` and record every conv and linear layer, in call
    order, except those inside `opaque` modules. Input densities average over all batches; zero padding is not
    counted as input."""
    if not inputs:
        raise SlimkitError("the hardware models need at least one input batch")
    for x in inputs:
        if not isinstance(x, Tensor):
            raise SlimkitError(f"the hardware models take models with one tensor input, not {type(x).__name__}")
    check_costable(model, opaque)
    seen: dict[str, dict] = {}
    hooks = []

    def hook(name: str):
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            x = args[0]
            channel_dim = 1 if layer_kind(module) == "conv" else x.ndim - 1
            nonzero = (x != 0).float().movedim(channel_dim, 0).reshape(x.shape[channel_dim], -1)
            entry = seen.setdefault(name, {"module": module, "sums": torch.zeros(x.shape[channel_dim]),
                                           "count": 0, "calls": 0})
            entry["sums"] += nonzero.sum(1)
            entry["count"] += nonzero.shape[1]
            entry["calls"] += 1
            out_channels = output.shape[1] if layer_kind(module) == "conv" else output.shape[-1]
            entry["positions"] = output.numel() // output.shape[0] // out_channels
            entry["input_shape"] = list(x.shape[1:])
        return record

    for name, module in model.named_modules():
        if layer_kind(module) is not None and "parametrizations" not in name.split(".") and not inside(name, opaque):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        for x in inputs:
            model(x)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    calls = {name: entry["calls"] // len(inputs) for name, entry in seen.items()}
    reused = [name for name, count in calls.items() if count != 1]
    if reused:
        raise UnsupportedLayerError(f"cannot cost layer {reused[0]!r}: it runs {calls[reused[0]]} times per "
                                    f"forward, and the hardware models cost each layer once")
    traces = []
    for name, entry in seen.items():
        module = entry["module"]
        weight_bits, input_bits = layer_bits(module)
        traces.append(LayerTrace(
            name=name, module=module, kind=known_adapter(module).kind, weight=canonical_weight(module).detach().clone(),
            positions=entry["positions"], input_shape=entry["input_shape"],
            input_density=entry["sums"] / entry["count"], weight_bits=weight_bits, input_bits=input_bits))
    return traces


ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout,
                       *BATCHNORMS)
ELEMENTWISE_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.hardtanh, torch.sigmoid,
                         torch.tanh}


@dataclass
class OutputPath:
    """What happens to a layer's output before it is next quantized: `ops` are the element-wise modules or
    functions in order (BatchNorm in eval mode is a per-channel affine map); `reader` the quantized layer
    whose input quantizer (`quantizer`) then reads it, or a partition (one of output_path's `leaves`, which
    quantizes its inputs itself: `quantizer` is None); both None when the output leaves the model."""

    ops: list[Callable[[Tensor], Tensor]]
    reader: nn.Module | None
    reader_name: str | None
    quantizer: nn.Module | None

    def apply(self, y: Tensor) -> Tensor:
        """The layer's output `y` as the reader's input quantizer returns it (or after the ops, when no
        quantizer reads it)."""
        for op in self.ops:
            y = op(y)
        return self.quantizer(y) if self.quantizer is not None else y


class _LeafTracer(LayerTracer):
    """LayerTracer that also keeps the named modules (LUT partitions) as single nodes."""

    def __init__(self, leaves: Collection[str]):
        super().__init__()
        self.leaves = set(leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def output_path(model: nn.Module, layer: str, leaves: Collection[str] = ()) -> OutputPath:
    """Follow `layer`'s output through element-wise ops (one reader each) to the quantized layer that reads
    it, by torch.fx (`leaves`: modules traced as single nodes). An output that meets anything else first (a
    residual add, a reshape, two readers) has no per-neuron quantized value, and the error names the op."""
    try:
        graph = _LeafTracer(leaves).trace(model)
    except Exception as exc:  # torch.fx raises many types on untraceable code
        raise SlimkitError(f"following {layer!r}'s output needs a torch.fx trace of the model, which failed: "
                           f"{type(exc).__name__}: {exc}") from None
    modules = dict(model.named_modules())
    node = next((n for n in graph.nodes if n.op == "call_module" and n.target == layer), None)
    if node is None:
        raise SlimkitError(f"{layer!r} is not called in the model's traced forward")
    ops: list[Callable[[Tensor], Tensor]] = []
    while True:
        users = list(node.users)
        if len(users) != 1:
            raise UnsupportedLayerError(f"layer {layer!r}: its output reaches {len(users)} readers after {node} "
                                        f"({', '.join(str(u) for u in users)}); a neuron's table needs one path "
                                        f"to one quantizer")
        user = users[0]
        if user.op == "output":
            return OutputPath(ops, None, None, None)
        if user.op == "call_module":
            name = str(user.target)  # a call_module node's target is the module's name
            if name in leaves:  # a partition reads it, quantizing its inputs itself
                return OutputPath(ops, modules[name], name, None)
            module, quantizer = modules[name], input_quantizer_of(modules[name])
            if layer_kind(module) is not None and quantizer is not None:
                return OutputPath(ops, module, name, quantizer)
            if isinstance(module, ELEMENTWISE_MODULES):
                ops.append(module)
                node = user
                continue
        elif user.op == "call_function" and callable(user.target) and user.target in ELEMENTWISE_FUNCTIONS \
                and len(user.args) == 1:
            ops.append(user.target)
            node = user
            continue
        elif user.op == "call_method" and user.target in ("relu", "sigmoid", "tanh") and len(user.args) == 1:
            ops.append(getattr(torch, user.target))
            node = user
            continue
        raise UnsupportedLayerError(f"layer {layer!r}: its output meets {user.op} {user.target!r} before any "
                                    f"quantizer: the LUT model needs each output to reach a quantized layer through "
                                    f"element-wise ops ({', '.join(m.__name__ for m in ELEMENTWISE_MODULES)})")
