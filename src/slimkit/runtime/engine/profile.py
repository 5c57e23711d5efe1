"""Where an OpenVINO model's time goes, from OpenVINO's own per-node counters (PERF_COUNT): per node
(`node_times`) and summed by node type and kernel (`profile_openvino`), so every figure that misses its
target says where the time went.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slimkit.runtime.engine.dense_engines import PINNED_F32
from slimkit.runtime.engine.export import openvino_core


def node_times(path: str | Path, shape: Sequence[int], threads: int, runs: int = 20) -> list[dict[str, Any]]:
    """OpenVINO's own per-node counters (PERF_COUNT) of a model: each executed node's name, type, kernel and ms
    per inference, averaged over `runs` inferences after a warm-up, in the order OpenVINO reports them (its
    execution order). slimkit's operators appear as their own types, run as 'Reference' kernels."""
    core = openvino_core()
    model = core.read_model(str(path))
    model.reshape(list(shape))
    types = {op.get_friendly_name(): op.get_type_name() for op in model.get_ordered_ops()}
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                                 "PERF_COUNT": True, **PINNED_F32})
    request = compiled.create_infer_request()
    x = np.random.default_rng(0).standard_normal(tuple(shape), dtype=np.float32)
    for _ in range(3):
        request.infer([x])
    rows: dict[str, dict[str, Any]] = {}
    for _ in range(runs):
        request.infer([x])
        for info in request.profiling_info:
            row = rows.setdefault(info.node_name, {"name": info.node_name, "node": types.get(info.node_name,
                                  info.node_type), "kernel": info.exec_type, "ms": 0.0})
            row["ms"] += info.real_time.total_seconds() * 1e3 / runs
    return [row for row in rows.values() if row["ms"] > 0]


def profile_openvino(path: str | Path, shape: Sequence[int], threads: int, runs: int = 20) -> list[dict[str, Any]]:
    """Where an OpenVINO model's time goes: node_times summed by node type and kernel, in ms per inference,
    slowest first."""
    return by_kind(node_times(path, shape, threads, runs))


def by_kind(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """node_times' rows summed by node type and kernel, slowest first."""
    totals: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        entry = totals.setdefault((row["node"], row["kernel"]), [0.0, 0])
        entry[0] += row["ms"]
        entry[1] += 1
    return sorted(({"node": kind, "kernel": kernel, "ms": ms, "nodes": count}
                   for (kind, kernel), (ms, count) in totals.items()), key=lambda r: -r["ms"])
