"""The integer graph of an 8-bit quantized model, for onnxruntime to run every layer in int8.

onnxruntime fuses DequantizeLinear -> op -> QuantizeLinear into one integer kernel (QLinearConv, QGemm,
QLinearAdd, ...) only when the op's inputs and its output are quantized. A QAT model quantizes layer inputs
and weights only, so a conv followed by BatchNorm, or feeding a residual add, ran as a float kernel on
dequantized values. This pass rewrites a copy of the model so that every op can be fused:

- BatchNorm after a quantized conv is folded into it. With per-channel weight steps this is exact on the
  grid: Q(W) * k has the integers of Q(W) with step s * |k| (k = gamma / sqrt(var + eps)).
- Every value an integer op produces or consumes is quantized once. A value that feeds a quantized layer
  uses that layer's trained input quantizer; a value that only ReLU reads is quantized after the ReLU
  (onnxruntime drops a ReLU before an unsigned quantize); data-movement ops (slicing, zero padding,
  flatten, max pooling) keep their input's grid; other values (residual sums, pooled features, the logits)
  get a new 8-bit quantizer calibrated on sample batches.

The result is a torch.fx GraphModule whose fake-quant forward is the reference the ONNX model must match.
It adds rounding the QAT model did not have (at residual sums, pooled features and the logits), so it
agrees with the QAT model within a few quantization steps, not exactly.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx import GraphModule, Node, symbolic_trace

from slimkit.errors import SlimkitError, UnsupportedLayerError
from slimkit.folding import batchnorm_affine, batchnorm_pairs, folded_weight_bias
from slimkit.layers import resized_conv2d
from slimkit.quant.attach import input_quantizer_of, quantization_of, weight_quantization
from slimkit.quant.quantizers import Observer, UniformQuantizer, activation_sample

RELU_MODULES, RELU_FUNCTIONS = (nn.ReLU,), (F.relu, torch.relu)
INTEGER_FUNCTIONS = (operator.add, torch.add, F.adaptive_avg_pool2d, F.avg_pool2d)
INTEGER_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
GRID_KEEPING_FUNCTIONS = (operator.getitem, F.pad, torch.flatten, F.max_pool2d)
GRID_KEEPING_METHODS = ("flatten", "view", "reshape")
GRID_KEEPING_MODULES = (nn.Flatten, nn.MaxPool2d, nn.Identity)
Batch = Tensor | Mapping[str, Tensor]  # a calibration batch: the model's input, or its inputs by keyword


def check_exportable(model: nn.Module) -> None:
    """Only 8-bit uniform quantizers map onto ONNX's int8/uint8 Q/DQ operators."""
    if not is_quantized(model):
        raise SlimkitError("the model has no quantized layer (a quantize stage that has not reached its start_epoch "
                           "leaves its layers float); export the model the run finished with")
    for name, module in model.named_modules():
        wq = weight_quantization(module)
        if wq is None:
            continue
        if not wq.active:
            raise SlimkitError(f"layer '{name}': its quantizers are not on yet (the quantize stage's start_epoch "
                               f"was not reached); export the model the run finished with")
        for role, q in (("weight", wq.quantizer), ("input", getattr(module, "input_quantizer", None))):
            if not isinstance(q, UniformQuantizer) or q.bits != 8:
                raise SlimkitError(f"layer '{name}': its {role} quantizer is {type(q).__name__} at "
                                   f"{getattr(q, 'bits', '?')} bits; ONNX int8 export needs 8-bit uniform "
                                   f"quantization (quantize: {{method: uniform, bits: 8}})")
            step = q.step.detach().reshape(-1)
            nonpositive = step <= 0
            if role == "weight":
                nonpositive &= ~_mirrors_exactly(module.weight.detach(), step, q.qmin)
            negative = int(nonpositive.sum())
            if negative:  # torch rounds x / s either way; Q/DQ and OpenVINO's FakeQuantize read s < 0 otherwise
                raise SlimkitError(f"layer '{name}': its {role} quantizer has {negative} step(s) <= 0 (training "
                                   f"drove them below zero: a learning rate too high for the quantizer steps); "
                                   f"int8 engines run only positive steps, and no positive grid gives these "
                                   f"weights (a zero step, or an integer at {q.qmin} under a negative one)")


def _mirrors_exactly(weight: Tensor, step: Tensor, qmin: int) -> Tensor:
    """Per step of a weight quantizer: whether the engines' grid of step |s| gives the same weights. A channel
    whose weights are all zero has integers 0 under any step; under s < 0 the integers k become -k, which fits
    the grid unless some k is qmin. Channels are the weight's first axis, or its last as in HF's Conv1D."""
    channels = step.numel()
    if weight.shape[0] == channels or channels == 1:
        rows = weight.reshape(channels, -1)
    elif weight.ndim == 2 and weight.shape[1] == channels:
        rows = weight.t()
    else:
        return torch.zeros(channels, dtype=torch.bool, device=weight.device)
    used = rows.ne(0).any(1)
    integers = torch.round(rows / step.where(step != 0, torch.ones_like(step)).unsqueeze(1))
    return ~used | ((step < 0) & ~(integers <= qmin).any(1))


def is_quantized(model: nn.Module) -> bool:
    return any(weight_quantization(m) is not None for m in model.modules())


class FoldedLayer(nn.Module):
    """A conv or linear whose weight is fixed on a per-channel 8-bit grid; its input arrives quantized."""

    step: Tensor  # buffers
    zero: Tensor

    def __init__(self, layer: nn.Conv2d | nn.Linear, weight: Tensor, step: Tensor, bias: Tensor | None):
        super().__init__()
        self.layer = _plain_copy(layer)
        self.layer.weight = nn.Parameter(weight, requires_grad=False)
        self.layer.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.register_buffer("step", step)
        self.register_buffer("zero", torch.zeros(step.numel(), dtype=torch.int32))

    def forward(self, x: Tensor) -> Tensor:
        weight = torch.fake_quantize_per_channel_affine(self.layer.weight, self.step, self.zero, 0, -128, 127)
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, weight, self.layer.bias)
        return F.linear(x, weight, self.layer.bias)


def _plain_copy(layer: nn.Conv2d | nn.Linear) -> nn.Conv2d | nn.Linear:
    """The same layer type and hyper-parameters, without parametrizations or hooks."""
    if isinstance(layer, nn.Conv2d):
        return resized_conv2d(layer, layer.in_channels, layer.out_channels, groups=layer.groups, bias=False)
    return nn.Linear(layer.in_features, layer.out_features, bias=False)


def fold_batchnorm(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm2d | nn.BatchNorm1d | None) -> FoldedLayer:
    """The layer with its quantized weight, and the eval-mode BatchNorm after it folded in."""
    quantizer = quantization_of(layer, type(layer).__name__).quantizer
    if not isinstance(quantizer, UniformQuantizer):  # check_exportable admits only 8-bit uniform quantizers
        raise SlimkitError(f"{type(layer).__name__}: folding needs a uniform weight quantizer, not "
                           f"{type(quantizer).__name__}")
    weight, step = layer.weight.detach().clone(), quantizer.step.detach().clone()
    bias = None if layer.bias is None else layer.bias.detach().clone()
    if bn is not None:
        step = step * batchnorm_affine(bn)[0].abs()  # the integers stay; their step takes |k|
        weight, bias = folded_weight_bias(weight, bias, bn)
    return FoldedLayer(layer, weight, step.abs().clamp_min(1e-12), bias)  # check_exportable: |s| is exact


def _is(node: Node, modules: dict[str, nn.Module], types: tuple[type[nn.Module], ...],
        functions: tuple[object, ...] = (), methods: tuple[str, ...] = ()) -> bool:
    if node.op == "call_module":
        return isinstance(modules[str(node.target)], types)
    if node.op == "call_function":
        return node.target in functions
    return node.op == "call_method" and node.target in methods


class _Recorder(nn.Module):
    """Stands where a new quantizer will go and keeps a sample of the values passing, for calibration."""

    def __init__(self) -> None:
        super().__init__()
        self.samples: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.samples += activation_sample(x)
        return x


class UntraceableModelError(UnsupportedLayerError):
    """torch.fx cannot trace the model, so it has no integer graph (see int8_form)."""


def _traced(model: nn.Module) -> GraphModule:
    was_training = model.training
    try:
        return symbolic_trace(model.eval())
    except Exception as exc:  # torch.fx raises many types on untraceable code
        raise UntraceableModelError(f"int8 export traces the model with torch.fx, which failed: "
                                    f"{type(exc).__name__}: {exc}") from None
    finally:
        model.train(was_training)


def int8_form(model: nn.Module, calibration: Iterable[Batch] | None) -> nn.Module:
    """What an 8-bit model is exported as: its integer graph (int8_graph, calibrated on `calibration`) where
    torch.fx traces it; otherwise (HF transformers: data-dependent masks) the model itself, whose quantizers put
    each quantized layer's input and weight on their 8-bit grids, so the engines run those layers in int8 and
    everything between them in float. That form adds no rounding the model does not have: it computes the
    model's own eval forward."""
    check_exportable(model)
    try:
        _traced(model)
    except UntraceableModelError:
        return model
    if calibration is None:
        raise SlimkitError("exporting a quantized model needs calibration batches (calibration=[x, ...]): "
                           "the integer graph quantizes residual sums, pooled features and logits too")
    return int8_graph(model, calibration)


def int8_graph(model: nn.Module, calibration: Iterable[Batch], observer: Observer = "minmax") -> GraphModule:
    """The integer graph of `model` (8-bit uniform quantization, see check_exportable), with the quantizers
    it adds calibrated on the batches in `calibration` (tensors, or dicts of tensors fed by keyword). `model`
    is not changed."""
    check_exportable(model)
    graph_module = _traced(model)
    modules = dict(graph_module.named_modules())
    layers = {n for n in graph_module.graph.nodes
              if n.op == "call_module" and weight_quantization(modules[str(n.target)]) is not None}
    _fold_batchnorms(graph_module, modules, layers, batchnorm_pairs(model))
    _insert_quantizers(graph_module, modules, layers)
    graph_module.delete_all_unused_submodules()
    graph_module.graph.lint()
    graph_module.recompile()
    _calibrate(graph_module.eval(), calibration, observer)  # eval: BatchNorms it kept are shared with `model`
    return graph_module


def _fold_batchnorms(graph_module: GraphModule, modules: dict[str, nn.Module], layers: set[Node],
                     pairs: dict[str, str]) -> None:
    """Each quantized layer becomes a FoldedLayer, with the BatchNorm that alone reads it folded in."""
    for node in layers:
        name = str(node.target)  # a call_module node's target is the module's name
        layer = modules[name]
        if not isinstance(layer, nn.Conv2d | nn.Linear):
            raise UnsupportedLayerError(f"int8 export runs quantized Conv2d and Linear layers, not "
                                        f"{type(layer).__name__} ('{name}')")
        bn: nn.BatchNorm1d | nn.BatchNorm2d | None = None
        if name in pairs:
            bn_node = next(iter(node.users))
            found = modules[str(bn_node.target)]
            if not isinstance(found, nn.BatchNorm1d | nn.BatchNorm2d):  # batchnorm_pairs pairs only these
                raise UnsupportedLayerError(f"'{bn_node.target}' after '{name}' is no BatchNorm to fold")
            bn = found
            bn_node.replace_all_uses_with(node)
            graph_module.graph.erase_node(bn_node)
        graph_module.add_submodule(name, fold_batchnorm(layer, bn))


class _QuantizerPlacement:
    """Where the integer graph's quantizers go: after every value an integer op produces or reads, once (see
    the module docstring). Data-movement ops keep their input's grid; a ReLU after an integer op is quantized
    instead of the op."""

    def __init__(self, graph_module: GraphModule, modules: dict[str, nn.Module], layers: set[Node]):
        self.graph_module, self.modules, self.layers = graph_module, modules, layers
        self.quantizer_of: dict[Node, str] = {}  # value -> the quantizer its integers are on

    def keeps_grid(self, node: Node) -> bool:
        return _is(node, self.modules, GRID_KEEPING_MODULES, GRID_KEEPING_FUNCTIONS, GRID_KEEPING_METHODS)

    def integer_op(self, node: Node) -> bool:
        return node in self.layers or _is(node, self.modules, INTEGER_MODULES, INTEGER_FUNCTIONS)

    def is_relu(self, node: Node) -> bool:
        return _is(node, self.modules, RELU_MODULES, RELU_FUNCTIONS)

    def readers(self, node: Node) -> list[Node]:
        """Who reads `node`, looking through data-movement ops."""
        found = []
        for user in node.users:
            found += self.readers(user) if self.keeps_grid(user) and user.args and user.args[0] is node else [user]
        return found

    def quantize_after(self, node: Node, name: str) -> None:
        graph = self.graph_module.graph
        with graph.inserting_after(node):
            q = graph.call_module(name, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
        self.quantizer_of[node] = self.quantizer_of[q] = name

    def _input_quantizer(self, layer: Node) -> nn.Module:
        quantizer = input_quantizer_of(self.modules[str(layer.target)])
        if quantizer is None:  # every layer in self.layers is quantized, its input too (check_exportable)
            raise SlimkitError(f"layer '{layer.target}' has no input quantizer")
        return quantizer

    def place(self, node: Node) -> None:
        """Quantize `node`'s value if an integer op produces or reads it and it is not on a grid already."""
        source = node.args[0] if node.args and isinstance(node.args[0], Node) else None
        if self.keeps_grid(node) and source in self.quantizer_of:
            if _is(node, self.modules, (nn.Identity,)):
                self.quantizer_of[node] = self.quantizer_of[source]
            else:  # the same grid: quantizing again is exact, and lets onnxruntime run the op on int8
                self.quantize_after(node, self.quantizer_of[source])
            return
        if self.integer_op(node) and len(node.users) == 1 and self.is_relu(next(iter(node.users))):
            return  # quantized after the ReLU instead
        reading = self.readers(node)
        layer = next((r for r in reading if r in self.layers), None)
        produced = self.integer_op(node) or (self.is_relu(node) and source is not None and self.integer_op(source))
        if not (produced or layer is not None or any(self.integer_op(r) for r in reading)):
            return
        name = f"int8_in_{node.name}"
        quantizer = _Recorder() if layer is None else copy.deepcopy(self._input_quantizer(layer))
        self.graph_module.add_submodule(name, quantizer)
        self.quantize_after(node, name)


def _insert_quantizers(graph_module: GraphModule, modules: dict[str, nn.Module], layers: set[Node]) -> None:
    """Quantize every value an integer op produces or reads, once (see the module docstring)."""
    placement = _QuantizerPlacement(graph_module, modules, layers)
    for node in list(graph_module.graph.nodes):
        if node.op != "output":
            placement.place(node)


@torch.no_grad()
def _calibrate(graph_module: GraphModule, calibration: Iterable[Batch], observer: Observer) -> None:
    recorders = {name: m for name, m in graph_module.named_children() if isinstance(m, _Recorder)}
    if not recorders:
        return
    seen = 0
    for x in calibration:
        if isinstance(x, Mapping):
            graph_module(**x)
        else:
            graph_module(x)
        seen += 1
    if not seen:
        raise ValueError("int8_graph needs at least one calibration batch")
    for name, recorder in recorders.items():
        quantizer = UniformQuantizer(8)
        quantizer.calibrate(torch.cat(recorder.samples), observer)
        graph_module.add_submodule(name, quantizer.eval())
