"""Latency tables: each layer's time in each candidate form, measured on this CPU in the engine the run
deploys to (OpenVINO, fp32 pinned, with slimkit's operators), at the target's batch size and threads.

A layer is timed alone: a model of that one layer, at its own input size, with a form's stages applied
(target.forms) and exported as export_measured would (engine/export.export_openvino; int8 layers with the
int8 graph's quantizers around them, so OpenVINO runs its own int8 kernel for the dense int8 form and
slimkit's block-sparse operator for the sparse forms; binary convs as slimkit's binary operator). Every form of
a layer is timed in one compare_latency call, taking turns, and keeps its median and IQR. Weights are seeded
random ones of the layer's shape (a sparse form's zero blocks chosen by magnitude at its sparsity): a layer's
time depends on its shape and structure, not on its values, so the tables are cached per CPU identity and
layer shape (target.cache) and layers of one shape are timed once.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.layers import resized_conv2d
from slimkit.metrics import compare_latency
from slimkit.runtime.engine.dense_engines import OpenVinoModel
from slimkit.runtime.engine.export import export_openvino, openvino_core
from slimkit.runtime.engine.layer_choice import MIN_SAMPLE_MS
from slimkit.target.cache import LatencyCache, Result, Timing
from slimkit.target.forms import LayerKind, apply_stages, form_stages
from slimkit.train.objective import Objective

CALIBRATION = 2  # seeded input batches that calibrate an int8 layer's quantizers


def shape_key(module: nn.Module, input_shape: Sequence[int]) -> dict[str, Any]:
    """What a layer's time depends on, as the cache keys it: its type and hyper-parameters and its input size."""
    if isinstance(module, nn.Conv2d):
        return {"type": "conv", "in": module.in_channels, "out": module.out_channels,
                "kernel": list(module.kernel_size), "stride": list(module.stride),
                "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
                "dilation": list(module.dilation), "groups": module.groups, "bias": module.bias is not None,
                "padding_mode": module.padding_mode, "input": list(input_shape)}
    if isinstance(module, nn.Linear):
        return {"type": "linear", "in": module.in_features, "out": module.out_features,
                "bias": module.bias is not None, "input": list(input_shape)}
    raise SlimkitError(f"{type(module).__name__}: latency tables time Conv2d and Linear layers only")


def form_label(kind: LayerKind, width: int) -> str:
    return f"{kind.name} w{width}"


def _layer_at(template: nn.Module, width: int) -> nn.Module:
    """A fresh layer like `template` with `width` outputs and seeded random weights."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if isinstance(template, nn.Conv2d):
            return resized_conv2d(template, template.in_channels, width, groups=template.groups,
                                  bias=template.bias is not None)
        if isinstance(template, nn.Linear):
            return nn.Linear(template.in_features, width, bias=template.bias is not None)
    raise SlimkitError(f"{type(template).__name__}: latency tables time Conv2d and Linear layers only")


def _single_layer(template: nn.Module, kind: LayerKind, width: int, batches: Sequence[tuple[torch.Tensor, ...]],
                  binary: str | None) -> nn.Module:
    stages = form_stages({"0": kind}, {}, binary=binary, calibration_batches=len(batches))
    return apply_stages(nn.Sequential(_layer_at(template, width)), stages, batches, Objective())


def time_forms(template: nn.Module, input_shape: Sequence[int], forms: Sequence[tuple[LayerKind, int]], *,
               batch: int, threads: int, repeats: int, binary: str | None, cache: LatencyCache,
               folder: Path) -> dict[str, Result]:
    """{form label: its time, or why it could not be timed} for a layer like `template` in each of `forms`
    (kind, output width), from the cache when it holds them all, else timed now and cached."""
    key = {"layer": shape_key(template, input_shape), "batch": batch, "threads": threads, "repeats": repeats,
           "binary": binary}
    labels = {form_label(kind, width) for kind, width in forms}
    cached = cache.get(key, labels)
    if cached is not None:
        return cached
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(8, *input_shape, generator=generator) for _ in range(CALIBRATION)]
    batches = [(x, torch.zeros(len(x), dtype=torch.long)) for x in inputs]
    work = Path(tempfile.mkdtemp(prefix=".slimkit-tables-", dir=folder))
    results: dict[str, Result] = {}
    models: dict[str, OpenVinoModel] = {}
    try:
        for index, (kind, width) in enumerate(forms):
            label = form_label(kind, width)
            try:
                model = _single_layer(template, kind, width, batches, binary)
                path = work / f"form{index}" / "model.xml"
                export_openvino(model, path, input_shape, inputs, chosen=() if kind.kind in ("fp32", "int8") else None)
                models[label] = OpenVinoModel(path, (batch, *input_shape), threads, core=openvino_core())
            except SlimkitError as exc:  # a form this layer cannot take (its export names why)
                results[label] = f"not timed: {exc}"
        if models:
            ms = compare_latency(models, list(input_shape), batch_sizes=(batch,), threads=threads, repeats=repeats,
                                 min_sample_ms=MIN_SAMPLE_MS)
            results.update({label: Timing(ms[label][str(batch)]["median"], ms[label][str(batch)]["iqr"])
                            for label in models})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    cache.put(key, results)
    return results
