"""Compressed models as OpenVINO models with slimkit's operators inside: the deployable artifact.

`engine_form(model)` swaps every deployable binary layer for a module that computes the same eval output
and exports to ONNX as one `slimkit::BinaryConv2d` node (the binarized weights and output scale become
constants). `export_openvino` writes that ONNX, reads it into OpenVINO with slimkit's operator library
(runtime/native, built by the set-up) and saves an OpenVINO IR (`model.xml` + `model.bin`). The IR runs in
plain OpenVINO once the library is added, with no slimkit training code:

    core = openvino.Core(); core.add_extension("libslimkit_openvino.so"); core.read_model("model.xml")

Every other layer is OpenVINO's own (it fuses BatchNorm, residual adds and activations around the custom
node). The binary operator is exact (two bit planes, as runtime/binary_kernels), so the engine's output
equals the training graph's eval output up to the float order of those fused ops.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from slimkit.binary.layers import BinaryConv2d
from slimkit.errors import SlimkitError, first_line
from slimkit.files import atomic_write
from slimkit.folding import batchnorm_affine
from slimkit.quant.onnx_export import export_onnx
from slimkit.runtime import native

DOMAIN = "slimkit"


class _BinaryConvFunction(torch.autograd.Function):
    """clamp(conv(sign(x), signs) * scale + shift (+ residual)) in torch; one slimkit::BinaryConv2d in ONNX."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, signs: Tensor, scale: Tensor, shift: Tensor, stride: int, pad: int,
                bounds: tuple[float, float] | None, *residual: Tensor) -> Tensor:
        y = F.conv2d(torch.sign(x), signs, None, stride, pad) * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
        if residual:
            y = y + residual[0]
        return y if bounds is None else y.clamp(*bounds)

    @staticmethod
    def symbolic(g: Any, x: Any, signs: Any, scale: Any, shift: Any, stride: int, pad: int,
                 bounds: tuple[float, float] | None, *residual: Any) -> Any:
        low, high = bounds or (0.0, 0.0)
        return g.op(f"{DOMAIN}::BinaryConv2d", x, signs, scale, shift, *residual, stride_i=stride, pad_i=pad,
                    clamp_i=int(bounds is not None), low_f=low, high_f=high)


class EngineBinaryConv2d(nn.Module):
    """A BinaryConv2d in its engine form: the input binarizer's normalisation (real ONNX ops), then the
    custom node with the weight binarizer's signs and the output scale and shift frozen as constants. The
    exporter fuses what follows the layer into it (`fuse_batchnorm`, `fuse_residual`, `fuse_clamp`)."""

    def __init__(self, layer: BinaryConv2d):
        super().__init__()
        stride, padding = layer.stride, layer.padding
        if (layer.groups != 1 or layer.dilation != (1, 1) or layer.padding_mode != "zeros"
                or isinstance(padding, str) or stride[0] != stride[1] or padding[0] != padding[1]):
            raise SlimkitError(f"slimkit's engine binary conv takes square-stride, symmetric zero-padded, "
                               f"ungrouped, undilated convs; this one has stride {stride}, padding {padding}, "
                               f"groups {layer.groups}, dilation {layer.dilation}")
        if not hasattr(layer.input_binarizer, "normalized"):
            raise SlimkitError("a weights-only binary conv has real-valued inputs; it has no engine binary form")
        with torch.no_grad():
            signs, scale = layer.weight_binarizer.eval()(layer.weight)
        if not bool((signs.abs() == 1).all()):
            raise SlimkitError("some binary weights are 0 (an exactly-zero latent weight, or {0, 1} codes); "
                               "the engine's binary conv needs +-1 weights")
        out = signs.shape[0]
        self.input_binarizer = layer.input_binarizer
        self.register_buffer("signs", signs.detach().float().contiguous().clone())
        self.register_buffer("scale", (torch.ones(out) if scale is None else scale.detach().reshape(-1).expand(out))
                             .float().contiguous().clone())
        self.register_buffer("shift", (torch.zeros(out) if layer.bias is None else layer.bias.detach()).float().clone())
        self.stride, self.pad = stride[0], padding[0]
        self.residual = False
        self.bounds: tuple[float, float] | None = None
        self.fused: list[str] = []

    def fuse_batchnorm(self, bn: nn.BatchNorm2d, name: str) -> None:
        """Fold an eval-mode BatchNorm that reads only this layer: y -> y * k + c, in float64 then rounded once."""
        k, c = batchnorm_affine(bn)
        self.scale = (self.scale.double() * k.double()).float()
        self.shift = (self.shift.double() * k.double() + c.double()).float()
        self.fused.append(name)

    def fuse_residual(self, name: str) -> None:
        self.residual = True
        self.fused.append(name)

    def fuse_clamp(self, low: float, high: float, name: str) -> None:
        self.bounds = (low, high)
        self.fused.append(name)

    def forward(self, x: Tensor, *residual: Tensor) -> Tensor:
        return _BinaryConvFunction.apply(self.input_binarizer.normalized(x), self.signs, self.scale, self.shift,
                                         self.stride, self.pad, self.bounds, *residual)


class _LeafTracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, EngineBinaryConv2d | BinaryConv2d) or super().is_leaf_module(m, qualname)


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
        return (float(low), float(high))
    return None


def _fuse_epilogues(model: nn.Module) -> nn.Module:
    """Fuse into each engine binary conv, in this order, what alone reads its output: an eval BatchNorm, a
    residual add, then a ReLU/hardtanh. Each fused op is one pass over a batch's activations saved, and no
    OpenVINO node (with its layout reorders) between two slimkit nodes."""
    graph = _LeafTracer().trace(model)
    modules = dict(model.named_modules())
    for conv in [n for n in graph.nodes if n.op == "call_module" and isinstance(modules[str(n.target)],
                                                                                   EngineBinaryConv2d)]:
        layer: EngineBinaryConv2d = modules[str(conv.target)]
        tail, residual = conv, None
        users = list(tail.users)
        if len(users) == 1 and users[0].op == "call_module" and isinstance(modules[str(users[0].target)],
                                                                         nn.BatchNorm2d):
            layer.fuse_batchnorm(modules[str(users[0].target)], str(users[0].target))
            tail, users = users[0], list(users[0].users)
        if (len(users) == 1 and users[0].op == "call_function" and users[0].target in (operator.add, torch.add)
                and len(users[0].args) == 2 and not users[0].kwargs
                and all(isinstance(a, fx.Node) for a in users[0].args)):
            residual = next(a for a in users[0].args if a is not tail)
            layer.fuse_residual(users[0].name)
            tail, users = users[0], list(users[0].users)
        bounds = _clamp_bounds(users[0], modules) if len(users) == 1 else None
        if bounds is not None:
            layer.fuse_clamp(*bounds, users[0].name)
            tail = users[0]
        if tail is conv:
            continue
        with graph.inserting_before(tail):
            fused = graph.call_module(str(conv.target), (conv.args[0], *([residual] if residual is not None else [])))
        tail.replace_all_uses_with(fused)
        for dead in reversed(_chain(conv, tail)):
            graph.erase_node(dead)
    return fx.GraphModule(model, graph)


def _chain(first: fx.Node, last: fx.Node) -> list[fx.Node]:
    """The single-user chain of nodes from `first` to `last`, both included."""
    chain = [first]
    while chain[-1] is not last:
        chain.append(next(iter(chain[-1].users)))
    return chain


def engine_form(model: nn.Module) -> tuple[nn.Module, list[dict[str, Any]]]:
    """An eval-mode copy with every binary conv in its engine form, epilogues fused, and a line per binary
    layer saying what it became and what it absorbed. A binary conv the operator does not take (dilated,
    grouped, 0-valued weights) stays the training graph's float conv on +-1 values, which OpenVINO runs
    exactly but not fast; its line says why."""
    model = copy.deepcopy(model).eval()
    lines: dict[str, dict[str, Any]] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, BinaryConv2d):
            try:
                model.set_submodule(name, EngineBinaryConv2d(module))
                lines[name] = {"layer": name, "engine": f"{DOMAIN}::BinaryConv2d"}
            except SlimkitError as exc:
                lines[name] = {"layer": name, "engine": "OpenVINO float conv on +-1 values", "reason": str(exc)}
    if not any(isinstance(m, EngineBinaryConv2d) for m in model.modules()):
        return model, list(lines.values())
    try:
        model = _fuse_epilogues(model)
    except Exception as exc:  # torch.fx fails on data-dependent control flow, among others
        raise SlimkitError(f"torch.fx could not trace the model to fuse the binary layers' epilogues: "
                           f"{type(exc).__name__}: {first_line(exc)}") from None
    for name, line in lines.items():
        module = model.get_submodule(name)
        if isinstance(module, EngineBinaryConv2d):
            line["fused"] = module.fused
    return model, list(lines.values())


def openvino_core() -> Any:
    """An OpenVINO Core with slimkit's operators added."""
    import openvino as ov

    core = ov.Core()
    core.add_extension(str(native.require_library()))
    return core


def export_openvino(model: nn.Module, path: str | Path, input_shape: Sequence[int]) -> dict[str, Any]:
    """Write `model` in its engine form as OpenVINO IR at `path` (.xml, with its .bin beside it), each file
    atomically. Returns what was written and which layers run slimkit's operators."""
    import openvino as ov

    path = Path(path)
    if path.suffix != ".xml":
        raise SlimkitError(f"an OpenVINO model is written as .xml (+ .bin); got {path}")
    engine, layers = engine_form(model)
    core = openvino_core()
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_path = path.with_suffix(".onnx.tmp")
    staging = path.with_name(path.stem + ".staging.xml")
    try:
        export_onnx(engine, onnx_path, input_shape, custom_opsets={DOMAIN: 1})
        ov.save_model(core.read_model(str(onnx_path)), str(staging), compress_to_fp16=False)
        for source, target in ((staging.with_suffix(".bin"), path.with_suffix(".bin")), (staging, path)):
            data = source.read_bytes()
            atomic_write(target, lambda f, data=data: f.write(data))
    finally:
        for leftover in (onnx_path, staging, staging.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)
    return {"model": str(path), "weights": str(path.with_suffix(".bin")), "library": str(native.require_library()),
            "slimkit_layers": layers}
