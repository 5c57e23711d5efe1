"""Which layers run as slimkit's operators, chosen by measurement on this CPU.

A layer's speed on slimkit's operator against OpenVINO's own kernel depends on the CPU, the layer's shape,
its sparsity and the batch: on the layers of ResNet-20 the same block-sparse int8 operator ran from 0.4x to 6x
OpenVINO's dense int8 kernel, so no fixed sparsity threshold can decide. `time_layers` times every candidate
layer (form.candidates) both ways at the export's batch size, in the same engine and precision (OpenVINO,
fp32 pinned; an int8 layer with the input and output quantizers the int8 graph gives it, so OpenVINO runs its
int8 kernel), taking turns with the same threads; a layer becomes an operator only where the operator was
faster. A layer alone is not the network (operators hand each other their integers or sign bits, and OpenVINO
reorders layouts at each switch), so export.export_measured then times whole artifacts as well.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

from slimkit.capture import Example, ExampleInputs, example_inputs
from slimkit.errors import SlimkitError
from slimkit.metrics import call, compare_latency, is_shape
from slimkit.quant.onnx_export import export_onnx
from slimkit.quant.quantizers import UniformQuantizer
from slimkit.runtime.engine.dense_engines import OpenVinoModel
from slimkit.runtime.engine.form import Candidates, quantizers_around
from slimkit.train.objective import logits_of

REPEATS = 9  # timed samples per form and layer (interleaved); each averages at least MIN_SAMPLE_MS
MIN_SAMPLE_MS = 2.0


def input_shapes(model: nn.Module, names: Sequence[str], example: Any) -> dict[str, tuple[int, ...]]:
    """Each named layer's input shape in a forward pass on `example` (what metrics.call hands the model)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            shapes.setdefault(name, tuple(args[0].shape))
        return hook

    hooks = [model.get_submodule(name).register_forward_pre_hook(record(name)) for name in names]
    try:
        with torch.no_grad():
            call(model, example)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def layer_alone(model: nn.Module, name: str) -> nn.Sequential:
    """The layer `name` of a prepared model as a model of its own, with the quantizers around it in an int8
    graph; both forms of the layer are exported from it."""
    before, after = quantizers_around(model, name)
    return nn.Sequential(*[m for m in (before, model.get_submodule(name), after) if m is not None]).eval()


def time_layers(model: nn.Module, candidates: Candidates, input_shape: Sequence[int], batch: int, threads: int,
                folder: Path) -> dict[str, dict[str, Any]]:
    """{layer: {"operator", "slimkit_ms", "openvino_ms"}} for every candidate of `model` (a prepared one), each
    layer alone at `batch`, its operator form against OpenVINO's own kernel ({"operator", "error"} for a layer
    that cannot be timed alone); the IRs go to `folder`."""
    from slimkit.runtime.engine.export import export_openvino, openvino_core

    shapes = input_shapes(model, list(candidates), torch.zeros(batch, *input_shape))
    out: dict[str, dict[str, Any]] = {}
    for index, (name, kind) in enumerate(candidates.items()):
        alone, shape = layer_alone(model, name), shapes[name]
        forms = {}
        try:
            for form, chosen in (("slimkit", None), ("openvino", ())):
                path = folder / f"layer{index}-{form}" / "model.xml"
                export_openvino(alone, path, shape[1:], chosen=chosen)
                forms[form] = OpenVinoModel(path, shape, threads, core=openvino_core())
        except SlimkitError as exc:  # the layer cannot run alone (its input quantizer sits behind a reshape, say)
            out[name] = {"operator": kind.operator, "error": f"not timed alone: {exc}"}
            continue
        ms = compare_latency(forms, shape[1:], batch_sizes=(batch,), threads=threads, repeats=REPEATS,
                             min_sample_ms=MIN_SAMPLE_MS)
        out[name] = {"operator": kind.operator, "slimkit_ms": ms["slimkit"][str(batch)]["median"],
                     "openvino_ms": ms["openvino"][str(batch)]["median"]}
    return out


def time_linear_layers(model: nn.Module, found: Mapping[str, str], example: ExampleInputs, batch: int, threads: int,
                       folder: Path) -> dict[str, dict[str, Any]]:
    """time_layers for a model captured by torch.export (transformer_form): each candidate linear layer alone on
    its input's shape in a forward of the example at `batch`, as slimkit::QuantSparseLinear against the Q/DQ int8
    layer OpenVINO fuses into its own int8 kernel, both exported through torch.export as the whole model is."""
    from slimkit.runtime.engine.export import openvino_core
    from slimkit.runtime.engine.quant_linear import TRANSLATIONS
    from slimkit.runtime.engine.transformer_form import DenseInt8Linear, as_operator

    shapes = input_shapes(model, list(found), example.feed(example.batch(batch)))
    out: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(found):
        layer, shape = model.get_submodule(name), shapes[name]
        forms = {}
        try:
            for form, alone in (("slimkit", as_operator(layer, name)), ("openvino", DenseInt8Linear(layer, name))):
                path = export_onnx(alone.eval(), folder / f"layer{index}-{form}.onnx", (torch.zeros(shape),),
                                   translations=TRANSLATIONS)
                forms[form] = OpenVinoModel(path, shape, threads, core=openvino_core())
        except SlimkitError as exc:
            out[name] = {"operator": found[name], "error": f"not timed alone: {exc}"}
            continue
        ms = compare_latency(forms, shape[1:], batch_sizes=(shape[0],), threads=threads, repeats=REPEATS,
                             min_sample_ms=MIN_SAMPLE_MS)
        out[name] = {"operator": found[name], "slimkit_ms": ms["slimkit"][str(shape[0])]["median"],
                     "openvino_ms": ms["openvino"][str(shape[0])]["median"]}
    return out


ARTIFACT_REPEATS = 15  # timed samples per whole artifact (interleaved)


def _reason(timing: dict[str, Any], runs_operator: bool, artifact: str) -> str:
    if "error" in timing:
        return timing["error"]
    alone = (f"alone: {timing['slimkit_ms']:.3f} ms as slimkit's operator, {timing['openvino_ms']:.3f} ms as "
             f"OpenVINO's own kernel")
    faster_alone = timing["slimkit_ms"] < timing["openvino_ms"]
    if runs_operator == faster_alone:
        return alone
    return f"{alone}; the whole model was fastest as '{artifact}'"


def export_measured(model: nn.Module, path: Path, example: Example, calibration: Any = None, *,
                    batch: int = 1, threads: int = 1) -> dict[str, Any]:
    """Export `model` to OpenVINO IR at `path` with the layers that measured faster as slimkit's operators.

    Every candidate layer is timed alone both ways (time_layers). Then whole artifacts are timed against each
    other at `batch`, taking turns: 'measured' (the layers that won alone), 'every operator' (every candidate:
    operators hand each other integers or sign bits, which a layer alone does not show) and 'dense' (none: the
    model as OpenVINO runs it by itself, in the same precision). The fastest is written, so the artifact is never
    slower than the dense model in the same engine, as measured. A tuple or dict `example` is captured by
    torch.export, whose candidates are the block-sparse int8 linear layers (transformer_form, timed alone by
    time_linear_layers). Returns
    export_openvino's info with each candidate's line saying what it runs as and why, and "choice": every
    artifact's time and the one chosen."""
    from slimkit.runtime.engine.export import export_openvino, openvino_core
    from slimkit.runtime.engine.form import candidates, prepared
    from slimkit.runtime.engine.transformer_form import linear_candidates

    inputs = example_inputs(example)
    per_sample = tuple(inputs.tensors[0].shape[1:])
    if not inputs.torch_export:  # a shape, or a tensor: its per-sample shape is all the layers are timed on
        example = per_sample
    shapes = inputs.shapes(batch)
    timed = example if not inputs.torch_export else inputs.feed(inputs.tensors)
    base = prepared(model, calibration)
    linears = linear_candidates(base) if inputs.torch_export else {}
    convs = {} if inputs.torch_export else candidates(base)
    found = [*linears, *convs]
    work = Path(tempfile.mkdtemp(prefix=".slimkit-choice-", dir=path.parent if path.parent.exists() else None))
    try:
        timings = {**(time_linear_layers(base, linears, inputs, batch, threads, work) if linears else {}),
                   **(time_layers(base, convs, per_sample, batch, threads, work) if convs else {})}
        faster = frozenset(n for n, t in timings.items() if "slimkit_ms" in t and t["slimkit_ms"] < t["openvino_ms"])
        variants = {"dense": frozenset(), "measured": faster, "every operator": frozenset(found)}
        names: dict[frozenset[str], str] = {}  # distinct layer sets, each exported and timed once, under the
        for name, layers in variants.items():  # first name that fits ('dense' where no layer won alone)
            names.setdefault(layers, name)
        models = {}
        for layers, name in names.items():
            target = work / name.replace(" ", "-") / "model.xml"
            export_openvino(base, target, example, chosen=layers)
            models[name] = OpenVinoModel(target, shapes, threads, core=openvino_core())
        ms = compare_latency(models, timed, batch_sizes=(batch,), threads=threads, repeats=ARTIFACT_REPEATS)
        times = {name: ms[name][str(batch)]["median"] for name in models}
        best = min(times, key=lambda name: times[name])
        info = export_openvino(base, path, example, chosen=variants[best])
        agreement = _agreement(base, path, example, calibration, threads)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = {line["layer"]: line for line in info["slimkit_layers"]}
    operators = {name for name, line in lines.items() if line["engine"].startswith("slimkit::")}
    if found:
        info["slimkit_layers"] = [
            {**lines.get(name, {"layer": name, "engine": "OpenVINO"}), "measured": timings[name],
             "reason": _reason(timings[name], name in operators, best)}
            for name in found] + [line for name, line in lines.items() if name not in found]
    info["choice"] = {"batch": batch, "threads": threads, "artifacts_ms": times, "chosen": best,
                      "candidates": len(found), "operators": len(operators)}
    info["agreement"] = agreement
    return info


def _agreement(reference: nn.Module, path: Path, example: Example, calibration: Any,
               threads: int) -> dict[str, Any]:
    """How far the written artifact's outputs are from `reference` (the prepared model in torch: a quantized
    model's int8 graph, whose last quantizer's step is the output grid, or the quantized model itself) on the
    calibration batches, or where there are none on seeded normal inputs of a shape example or on the example
    itself. slimkit's operators compute the reference's arithmetic (binary sums exactly, float epilogues within
    rounding, int8 within one step of the grid), but OpenVINO's own int8 kernels round some values the graph
    rounds (residual sums, pooled features) elsewhere, so an artifact with layers left to OpenVINO can be several
    steps away: measured here, reported in engine.json, never hidden."""
    from slimkit.runtime.engine.export import openvino_core

    inputs = example_inputs(example)
    if calibration is not None:
        batches = list(calibration)
    elif is_shape(example):
        batches = [torch.randn(4, *example, generator=torch.Generator().manual_seed(seed)) for seed in range(2)]
    else:
        batches = [inputs.feed(inputs.tensors)]
    worst = 0.0
    for x in batches:
        given = example_inputs(x)
        artifact = OpenVinoModel(path, given.shapes(int(given.tensors[0].shape[0])), threads, core=openvino_core())
        with torch.no_grad():
            worst = max(worst, float((logits_of(call(artifact, x)) - logits_of(call(reference, x))).abs().max()))
    quantizers = [m for m in reference.modules() if isinstance(m, UniformQuantizer) and m.channels == 1]
    step = float(quantizers[-1].step.detach().reshape(())) if quantizers and isinstance(reference, fx.GraphModule) \
        else None
    source = ("the calibration batches" if calibration is not None else "seeded normal inputs" if is_shape(example)
              else "the example")
    return {"reference": "the int8 graph (fake-quant)" if step else "the model in torch (eval)",
            "inputs": source, "max_abs_difference": worst, "output_step": step,
            "in_steps": None if step is None else worst / step}
