"""From a trained dense model to the per-layer stages that reach a latency target: time every layer's forms
(target.tables), the dense network in every dense engine (the baseline), and each form's loss increase
(target.sensitivity); solve (target.solver); write the result as ordinary recipe stages (target.forms).

Nothing here trains: the stages go back to the run (pipeline.run_recipe), which fine-tunes with them, exports
the model, measures it against the same dense engines, and checks the target against that measurement
(target.outcome).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.environment import cpu_info
from slimkit.errors import SlimkitError
from slimkit.metrics import compare_latency, default_threads
from slimkit.runtime.bench import DENSE_FP32, DENSE_INT8, DENSE_REDUCED, best_of
from slimkit.runtime.engine.build import cache_dir, cpu_identity
from slimkit.runtime.engine.dense_engines import dense_engines, export_dense
from slimkit.runtime.engine.layer_choice import input_shapes
from slimkit.target.cache import LatencyCache, Result, Timing
from slimkit.target.config import TargetConfig
from slimkit.target.forms import FP32, LayerKind, form_stages, layer_kinds, target_layers
from slimkit.target.groups import ChannelGroups, channel_groups, without_groups
from slimkit.target.sensitivity import kind_sensitivity, width_sensitivity
from slimkit.target.solver import LayerTable, Problem, Solution, Solver
from slimkit.target.tables import form_label, shape_key, time_forms
from slimkit.train.objective import Objective

BASELINES = {"best_dense": DENSE_FP32 + DENSE_REDUCED + DENSE_INT8, "best_fp32": DENSE_FP32, "best_int8": DENSE_INT8}


def baseline_engine(ms: dict[str, dict[str, float]], baseline: str) -> str:
    """The dense engine a speed-up is over: the fastest of a family (best_dense, best_fp32, best_int8) or the
    engine named; one that was not timed is an error naming what was."""
    found = best_of(ms, BASELINES[baseline]) if baseline in BASELINES else baseline if baseline in ms else None
    if found is None:
        raise SlimkitError(f"target.baseline {baseline!r}: no such dense engine was timed here (timed: "
                           f"{', '.join(ms) or 'none'})")
    return found


@dataclass(frozen=True)
class TargetChoice:
    """The stages that give the chosen forms, and what the choice records (target.json, metrics.json)."""

    stages: list[dict[str, Any]]
    section: dict[str, Any]

    @property
    def reached(self) -> bool:
        return bool(self.section["reached"])


def _dense_network(model: nn.Module, input_shape: Sequence[int], calibration: list[torch.Tensor],
                   config: TargetConfig, threads: int) -> dict[str, dict[str, float]]:
    """The dense model in every dense engine at the target's batch and threads, taking turns (median, IQR)."""
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_dense(model.eval(), input_shape, calibration, Path(tmp))
        engines = dense_engines(exported, (config.batch, *input_shape), threads)
        forms = {name: engine for name, engine in engines.items() if not name.endswith("_error")}
        if "openvino_fp32" not in forms:
            raise SlimkitError(f"a latency target needs OpenVINO, the engine its tables are measured in: "
                               f"{engines.get('openvino_fp32_error', 'openvino_fp32 could not be built')}")
        ms = compare_latency(forms, input_shape, batch_sizes=(config.batch,), threads=threads,
                             repeats=max(config.repeats, 15))
    return {name: ms[name][str(config.batch)] for name in forms}


def _measured_widths(name: str, groups: ChannelGroups) -> list[int]:
    """The output widths a layer is timed at: its own, and each one group's choices give it alone."""
    widths = {groups.out_channels[name]}
    for index, group in enumerate(groups.groups):
        if name in group.producers:
            widths.update(groups.out_width(name, groups.only(index, c)) for c in group.choices)
    return sorted(widths, reverse=True)


def _tables(layers: dict[str, nn.Module], shapes: dict[str, tuple[int, ...]], kinds: dict[str, list[LayerKind]],
            groups: ChannelGroups, config: TargetConfig, threads: int
            ) -> tuple[dict[str, dict[str, dict[int, Timing]]], dict[str, dict[str, Any]], str]:
    """Each layer's times {kind name: {width: timing}} (at its input shape in `shapes`), the raw table per layer
    (errors included) and the cache identity."""
    cache = LatencyCache(cache_dir(), f"{cpu_identity()} openvino {_openvino_version()}")
    times: dict[str, dict[str, dict[int, Timing]]] = {}
    raw: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        forms = {name: _forms(name, kinds[name], groups) for name in layers}
        same_shape: dict[str, list[str]] = {}  # layers of one shape are timed once, in every form any of them takes
        for name, module in layers.items():
            same_shape.setdefault(json.dumps(shape_key(module, shapes[name][1:]), sort_keys=True), []).append(name)
        for names in same_shape.values():
            every = list(dict.fromkeys(form for name in names for form in forms[name]))
            results = time_forms(layers[names[0]], shapes[names[0]][1:], every, batch=config.batch, threads=threads,
                                 repeats=config.repeats, binary=config.binary, cache=cache, folder=Path(tmp))
            for name in names:
                raw[name], times[name] = _table(name, forms[name], results, groups.out_channels[name])
    return times, raw, cache.identity


def _forms(name: str, kinds: list[LayerKind], groups: ChannelGroups) -> list[tuple[LayerKind, int]]:
    """A layer's forms to time: each kind at each width (sparse and binary kinds at its own width only)."""
    widths = _measured_widths(name, groups)
    return [(k, w) for k in kinds for w in (widths[:1] if k.keeps_width else widths)]


def _table(name: str, forms: list[tuple[LayerKind, int]], results: dict[str, Result], width: int
           ) -> tuple[dict[str, Any], dict[str, dict[int, Timing]]]:
    """A layer's raw table (reasons included) and its times {kind name: {width: timing}}; a layer whose dense
    form could not be timed is an error naming it."""
    raw = {form_label(k, w): results[form_label(k, w)] for k, w in forms}
    times: dict[str, dict[int, Timing]] = {}
    for kind, w in forms:
        result = raw[form_label(kind, w)]
        if isinstance(result, Timing):
            times.setdefault(kind.name, {})[w] = result
    if width not in times.get(FP32.name, {}):
        raise SlimkitError(f"layer '{name}' could not be timed in its dense form: {raw[form_label(FP32, width)]}")
    return {label: r if isinstance(r, str) else r.to_dict() for label, r in raw.items()}, times


def _faster_somewhere(kinds: dict[str, list[LayerKind]], times: dict[str, dict[str, dict[int, Timing]]],
                      groups: ChannelGroups) -> dict[str, list[LayerKind]]:
    """Each layer's kinds that measured faster than its dense form at some width (and fp32): the only ones a
    solution can hold, so the only ones whose loss is worth measuring."""
    out = {}
    for name, options in kinds.items():
        dense = times[name][FP32.name][groups.out_channels[name]].median
        faster = {k for k, by_width in times[name].items() if any(t.median < dense for t in by_width.values())}
        out[name] = [k for k in options if k == FP32 or k.name in faster]
    return out


def _openvino_version() -> str:
    import openvino

    return str(openvino.__version__)


def choose(model: nn.Module, batches: list[Any], objective: Objective, config: TargetConfig,
           input_shape: Sequence[int], *, epochs: int) -> TargetChoice:
    """The per-layer stages that reach `config`'s target on this CPU at the least one-shot loss, measured on
    `batches` (training batches) from the trained dense `model` (on the CPU; it is not changed); the
    quantizers of the chosen int8 layers start at the last of `epochs`."""
    threads = config.threads or default_threads()
    model = model.eval()
    inputs = [objective.split(b)[0][0] for b in batches]
    shapes = input_shapes(model, list(target_layers(model)), torch.zeros(1, *input_shape))
    layers = {name: m for name, m in target_layers(model).items() if name in shapes}  # the ones the forward runs
    if not layers:
        raise SlimkitError("a latency target chooses forms for Conv2d and Linear layers, and this model runs none")
    try:
        groups, widths_note = channel_groups(model, inputs[0][:1], layers, config.widths, config.round_to), None
    except SlimkitError as exc:  # the channel graph cannot trace it: no narrower widths, said so in the record
        groups, widths_note = without_groups(layers), f"no channel widths: {exc}"
    first_conv = next((n for n, m in layers.items() if isinstance(m, nn.Conv2d)), None)
    kinds = {name: layer_kinds(module, name == first_conv, config.int8, config.sparsities, config.binary)
             for name, module in layers.items()}
    times, raw, identity = _tables(layers, shapes, kinds, groups, config, threads)
    network = _dense_network(model, input_shape, inputs, config, threads)
    sensitivity = kind_sensitivity(model, _faster_somewhere(kinds, times, groups), batches, objective, config.binary)
    problem = Problem({name: LayerTable(times[name], groups.out_channels[name], groups.in_channels[name],
                                        sensitivity[name]) for name in layers},
                      groups, width_sensitivity(model, groups, batches, objective), network["openvino_fp32"]["median"])
    baseline = baseline_engine(network, config.baseline)
    target_ms = network[baseline]["median"] / config.speedup
    solver = Solver(problem)
    solution = solver.solve(target_ms)
    chosen = {name: LayerKind.parse(kind) for name, kind in solution.point.kinds if kind != FP32.name}
    stages = form_stages(chosen, groups.widths(solution.point.kept), binary=config.binary,
                         quantize_epoch=max(0, epochs - 1), calibration_batches=config.calibration_batches)
    section = _section(config, problem, solution, solver.scale, network, baseline, raw, identity, threads)
    return TargetChoice(stages, {**section, "widths_note": widths_note} if widths_note else section)


def _section(config: TargetConfig, problem: Problem, solution: Solution, scale: float,
             network: dict[str, dict[str, float]], baseline: str, raw: dict[str, dict[str, Any]], identity: str,
             threads: int) -> dict[str, Any]:
    baseline_ms = network[baseline]["median"]
    return {
        "speedup": config.speedup, "baseline_rule": config.baseline, "baseline": baseline, "baseline_ms": baseline_ms,
        "batch": config.batch,
        "threads": threads, "target_ms": solution.target_ms, "dense_engines_ms": network,
        "openvino_fp32_ms": problem.network_ms, "predicted_ms": solution.predicted_ms,
        "predicted_speedup": baseline_ms / solution.predicted_ms, "reached": solution.reached,
        "sensitivity": solution.sensitivity, "max_accuracy_drop": config.max_accuracy_drop,
        "groups": [{"layers": list(g.producers), "size": g.size, "kept": k, "choices": list(g.choices)}
                   for g, k in zip(problem.groups.groups, solution.point.kept, strict=True)],
        "layers": solution.layers(problem, scale), "layer_scale": scale, "tables": raw, "cpu": cpu_info(),
        "identity": identity,
    }
