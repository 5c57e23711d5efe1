"""Layer choice by measurement (engine/layer_choice, engine/artifact): which layers become slimkit's operators is
decided by timing them on this CPU, never by a fixed sparsity threshold, and the exported artifact is the
fastest of the whole artifacts measured, so never slower than the dense model in the same engine."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.models import resnet20
from slimkit.quant.int8_graph import int8_graph
from slimkit.runtime.engine import layer_choice
from slimkit.runtime.engine.artifact import export_folder, load_folder, read_manifest
from slimkit.runtime.engine.dense_engines import OpenVinoModel
from slimkit.runtime.engine.export import export_openvino, openvino_core
from slimkit.runtime.engine.form import candidates, prepared

sys.path.insert(0, str(Path(__file__).parent))
from test_quant_sparse import _block_sparse_int8

pytest.importorskip("openvino")


def _model() -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = _block_sparse_int8(resnet20(width=0.5), 0.9, torch.randn(16, 3, 32, 32))
    return model, [torch.randn(8, 3, 32, 32) for _ in range(2)]


def _fake_timing(monkeypatch, faster_alone: set[str], artifacts: dict[str, float]) -> None:
    """Replace the clock: layers in `faster_alone` measure faster as operators, and whole artifacts take
    `artifacts` ms; the exports themselves are real."""

    def time_layers(model, found, input_shape, batch, threads, folder):
        return {n: {"operator": k.operator, "slimkit_ms": 1.0 if n in faster_alone else 3.0, "openvino_ms": 2.0}
                for n, k in found.items()}

    def compare_latency(models, example, **kwargs):
        return {name: {"1": {"median": artifacts[name], "iqr": 0.0}} for name in models}

    monkeypatch.setattr(layer_choice, "time_layers", time_layers)
    monkeypatch.setattr(layer_choice, "compare_latency", compare_latency)


def _operators(manifest: dict) -> set[str]:
    return {line["layer"] for line in manifest["slimkit_layers"] if line["engine"].startswith("slimkit::")}


def test_only_layers_faster_alone_become_operators_when_that_artifact_wins(tmp_path, monkeypatch):
    model, calibration = _model()
    found = list(candidates(prepared(model, calibration)))
    winners = set(found[::3])
    _fake_timing(monkeypatch, winners, {"measured": 1.0, "every operator": 2.0, "dense": 3.0})
    manifest = export_folder(model, tmp_path / "engine", (3, 32, 32), calibration, threads=2)
    assert manifest["choice"]["chosen"] == "measured" and _operators(manifest) == winners
    assert manifest["choice"]["artifacts_ms"] == {"measured": 1.0, "every operator": 2.0, "dense": 3.0}
    xml = (tmp_path / "engine" / "model.xml").read_text()
    assert xml.count('type="QuantSparseConv2d"') == len(winners)
    for line in manifest["slimkit_layers"]:  # every candidate has its measured line and a reason
        assert line["measured"]["slimkit_ms"] in (1.0, 3.0) and "as slimkit's operator" in line["reason"]


def test_the_dense_artifact_is_written_with_its_reason_when_the_operators_lose(tmp_path, monkeypatch):
    model, calibration = _model()
    found = set(candidates(prepared(model, calibration)))
    _fake_timing(monkeypatch, found, {"measured": 2.5, "dense": 2.0})  # every layer won alone: one set, "measured"
    manifest = export_folder(model, tmp_path / "engine", (3, 32, 32), calibration, threads=2)
    assert manifest["choice"]["chosen"] == "dense" and _operators(manifest) == set()
    assert 'type="QuantSparseConv2d"' not in (tmp_path / "engine" / "model.xml").read_text()
    assert all("the whole model was fastest as 'dense'" in line["reason"] for line in manifest["slimkit_layers"])
    x = torch.randn(2, 3, 32, 32)
    got = load_folder(tmp_path / "engine", (2, 3, 32, 32))(x)
    assert torch.equal(got, _exported(model, calibration, (), tmp_path / "plain", x))  # OpenVINO's own int8 of it
    assert manifest["agreement"]["max_abs_difference"] == _worst(model, calibration, tmp_path / "engine")


def _exported(model: nn.Module, calibration: list[torch.Tensor], chosen, folder: Path, x: torch.Tensor) -> torch.Tensor:
    """`model` exported with the `chosen` layers as operators, run on `x`."""
    export_openvino(prepared(model, calibration), folder / "model.xml", (3, 32, 32), chosen=chosen)
    return OpenVinoModel(folder / "model.xml", tuple(x.shape), 2, core=openvino_core())(x)


def _worst(model: nn.Module, calibration: list[torch.Tensor], folder: Path) -> float:
    """The largest difference between the folder's artifact and the int8 graph on the calibration batches."""
    graph = int8_graph(model, calibration)
    with torch.no_grad():
        return max(float((load_folder(folder, tuple(x.shape))(x) - graph(x)).abs().max()) for x in calibration)


def test_a_measured_export_is_the_fastest_artifact_it_timed_and_exact(tmp_path):
    """No fake clock: whatever this CPU measures, the written artifact is the one that measured fastest, and it
    computes the int8 graph within a step of its output grid."""
    model, calibration = _model()
    manifest = export_folder(model, tmp_path / "engine", (3, 32, 32), calibration, batch=2, threads=2)
    times = manifest["choice"]["artifacts_ms"]
    assert manifest["choice"]["chosen"] == min(times, key=times.get) and "dense" in times
    assert manifest["precision"] == "fp32" and manifest["runtime_options"] == {"INFERENCE_PRECISION_HINT": "f32"}
    assert all(line["kernel"] for line in manifest["slimkit_layers"] if line["engine"].startswith("slimkit::"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]  # no staging or timing folder left
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(load_folder(tmp_path / "engine")(x), _exported(model, calibration, _operators(manifest),
                                                                      tmp_path / "again", x))
    assert manifest["agreement"]["max_abs_difference"] == _worst(model, calibration, tmp_path / "engine")
    if manifest["choice"]["chosen"] == "every operator":  # slimkit's operators compute the int8 graph's arithmetic
        assert manifest["agreement"]["in_steps"] <= 2


def test_an_exported_folder_loads_only_whole_and_with_this_installations_operators(tmp_path, monkeypatch):
    model, calibration = _model()
    found = set(candidates(prepared(model, calibration)))
    _fake_timing(monkeypatch, found, {"measured": 1.0, "dense": 2.0})
    folder = tmp_path / "engine"
    export_folder(model, folder, (3, 32, 32), calibration, threads=2)
    manifest = json.loads((folder / "engine.json").read_text())
    assert set(manifest["sha256"]) == {"model.xml", "model.bin", "libslimkit_openvino.so"}
    assert read_manifest(folder) == manifest
    blob = folder / "model.bin"
    original = blob.read_bytes()
    blob.write_bytes(original[:-4] + b"\x01\x02\x03\x04")  # a changed weight
    with pytest.raises(SlimkitError, match=r"model\.bin: missing or changed since the export"):
        load_folder(folder)
    blob.write_bytes(original)
    library = folder / "libslimkit_openvino.so"
    library.write_bytes(library.read_bytes() + b"\0")  # another library, its digest written into engine.json
    manifest["sha256"]["libslimkit_openvino.so"] = hashlib.sha256(library.read_bytes()).hexdigest()
    (folder / "engine.json").write_text(json.dumps(manifest))
    with pytest.raises(SlimkitError, match="not this installation's build"):  # digests fit, but it is not ours
        load_folder(folder)


def test_a_reexport_replaces_the_folder_whole(tmp_path, monkeypatch):
    model, calibration = _model()
    found = list(candidates(prepared(model, calibration)))
    folder = tmp_path / "engine"
    _fake_timing(monkeypatch, set(found), {"measured": 1.0, "dense": 2.0})
    first = export_folder(model, folder, (3, 32, 32), calibration, threads=2)
    (folder / "note.txt").write_text("a user's file in the old export")
    _fake_timing(monkeypatch, set(), {"dense": 1.0, "every operator": 3.0})  # no layer won: 'measured' is 'dense'
    second = export_folder(model, folder, (3, 32, 32), calibration, threads=2)
    assert _operators(first) == set(found) and _operators(second) == set()
    assert sorted(p.name for p in folder.iterdir()) == ["engine.json", "libslimkit_openvino.so", "model.bin",
                                                       "model.xml"]
    assert read_manifest(folder)["choice"]["chosen"] == "dense"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]
