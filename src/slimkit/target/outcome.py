"""The target against the run's own measurement: after fine-tuning, the run exports the model and times it
against the same dense engines, at the target's batch and threads (measure.engines). Here that measurement is
read back: the speed-up over the baseline engine (the same rule as when choosing, applied to the new timings),
whether it reaches the target outright or within the measured noise (the two timings' IQRs, relative, summed),
each layer's time in the artifact (OpenVINO's per-node counters) beside its prediction, and the accuracy drop
against the allowed one. Nothing is relaxed: a miss is recorded and reported as one.
"""

from __future__ import annotations

from typing import Any

from slimkit.target.choose import baseline_engine


def module_paths(node: str) -> set[str]:
    """The module paths an exported node's name passes through. torch's ONNX export names a node by its module
    scopes, '/layer1/layer1.0/conv1/Conv': a container's child is named by its qualified name, an attribute by
    its own, so each scope either extends the path ('layer1.0' after 'layer1') or is appended to it."""
    paths, current = set(), ""
    for scope in node.split("/"):
        if not scope:
            continue
        current = scope if not current or scope.startswith(f"{current}.") else f"{current}.{scope}"
        paths.add(current)
    return paths


def node_of_layer(node: str, layer: str, layers: list[str]) -> bool:
    """Whether an exported node belongs to `layer`: an operator node is named after it; OpenVINO's own node's name
    passes through its module path, or (a torch.fx graph's call names only the module, '/conv1/Conv' for
    'body.conv1') through a tail of it that no other layer ends with."""
    if node == layer:
        return True
    for path in module_paths(node):
        if path == layer:
            return True
        if layer.endswith(f".{path}") and [other for other in layers if other == path or other.endswith(f".{path}")
                                          ] == [layer]:
            return True
    return False


def _layer_ms(layer: str, nodes: list[dict[str, Any]], layers: list[str]) -> float | None:
    """The artifact's time in a layer's nodes (layout reorders between layers are not counted), or None when no
    node can be told to be the layer's."""
    matched = [n["ms"] for n in nodes if node_of_layer(n["name"], layer, layers)]
    return sum(matched) if matched else None


def _accuracy(section: dict[str, Any], models: dict[str, Any], metric: dict[str, Any] | None) -> dict[str, Any]:
    if metric is None:
        return {"metric": None, "drop": None, "max_drop": section["max_accuracy_drop"], "met": None}
    key = f"test_{metric['name']}"
    dense, compressed = models["dense"].get(key), models["compressed"].get(key)
    drop = None if dense is None or compressed is None else (
        dense - compressed if metric["higher_is_better"] else compressed - dense)
    limit = section["max_accuracy_drop"]
    return {"metric": metric["name"], "dense": dense, "compressed": compressed, "drop": drop, "max_drop": limit,
            "met": None if limit is None or drop is None else drop <= limit}


def with_measurement(section: dict[str, Any], engine: dict[str, Any] | None, models: dict[str, Any],
                     metric: dict[str, Any] | None) -> dict[str, Any]:
    """`section` (the choice) with the run's measurement of it: `engine` is metrics.json's engine section,
    `models` the phases' results, `metric` the objective's (name, higher_is_better). The baseline engine is
    found again by the target's rule ('best_dense', an engine's name) among the new timings."""
    out = {**section, "accuracy": _accuracy(section, models, metric)}
    batch = str(section["batch"])
    if not engine or "error" in engine or batch not in engine.get("batches", {}):
        reason = (engine or {}).get("error", f"the engines were not timed at batch {batch}")
        return {**out, "measured": {"error": reason}}
    timed = engine["batches"][batch]
    ms = timed["latency_ms"]
    baseline = baseline_engine({k: v for k, v in ms.items() if k != "engine"}, section["baseline_rule"])
    ours, base = ms["engine"], ms[baseline]
    speedup = base["median"] / ours["median"]
    noise = speedup * (ours["iqr"] / ours["median"] + base["iqr"] / base["median"])
    nodes = timed.get("engine_nodes", [])
    names = [line["layer"] for line in section["layers"]]
    out["layers"] = [{**line, "measured_ms": _layer_ms(line["layer"], nodes, names)} for line in section["layers"]]
    out["measured"] = {"baseline": baseline, "baseline_ms": base["median"], "baseline_iqr_ms": base["iqr"],
                       "engine_ms": ours["median"], "engine_iqr_ms": ours["iqr"], "speedup": speedup, "noise": noise,
                       "reached": speedup >= section["speedup"], "within_noise": speedup + noise >= section["speedup"]}
    return out
