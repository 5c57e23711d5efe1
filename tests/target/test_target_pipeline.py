"""The target in a run, with the clock replaced (the real timing runs in the README's example): the choice is
written (target.json, target-recipe.yaml), the compressed model has the chosen forms, the report puts the
target against the run's measurement, and a resumed run reads its choice back instead of timing again."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import slimkit
from slimkit.errors import SlimkitError
from slimkit.methods import parse_stage
from slimkit.quant.attach import weight_quantization
from slimkit.recipe import Recipe
from slimkit.target import choose as choose_module
from slimkit.target.cache import Timing
from slimkit.target.forms import LayerKind
from slimkit.target_recipe import targeted_recipe

RECIPE = {"name": "target-run", "seed": 0, "model": {"name": "lenet", "width": 1.0},
          "data": {"name": "digits", "batch_size": 64}, "baseline": {"epochs": 2, "lr": 0.05},
          "train": {"epochs": 1, "lr": 0.01}, "measure": {"repeats": 3, "warmup": 1},
          "target": {"speedup": 1.5, "widths": [0.5], "sparsities": [0.9], "calibration_batches": 2}}
# train.epochs 1: the int8 layers' quantizers start at epoch 0. (A resume of a finished run whose quantize stage
# started later fails on main too: the rebuilt optimizer orders the quantized layers' parameters differently.)
MEASURED = {"engine": 1.8, "openvino_int8": 3.0, "openvino_fp32": 6.0}


def _fake_times(template, input_shape, forms, **kwargs) -> dict[str, Timing]:
    """ms in proportion to the form's multiplies: int8 at 0.4 of fp32, block-sparse at (1 - s) * 0.6."""
    inputs = template.in_channels if isinstance(template, nn.Conv2d) else template.in_features
    per_output = inputs * (math.prod(template.kernel_size) * math.prod(input_shape[1:]) if isinstance(
        template, nn.Conv2d) else 1)
    scale = {"fp32": 1.0, "int8": 0.4}
    out = {}
    for kind, width in forms:
        factor = scale.get(kind.kind, (1 - kind.sparsity) * 0.6)
        out[f"{kind.name} w{width}"] = Timing(per_output * width * factor / 1e5, 0.001)
    return out


def _fake_engine(dense, compressed, shape, calibration, folder, *, batch_sizes, threads, repeats) -> dict:
    latency = {name: {"median": ms, "iqr": 0.05} for name, ms in MEASURED.items()}
    nodes = [{"name": "features.3", "node": "Convolution", "kernel": "jit", "ms": 0.25}]
    return {"artifact": str(folder), "threads": 1, "cpu_model": "test", "isa": [], "slimkit_layers": [], "batches": {
        "1": {"latency_ms": latency, "engine_vs": {"best_dense": {"baseline": "openvino_int8", "speedup": 3.0 / 1.8}},
              "engine_profile": [], "engine_nodes": nodes, "precision": {}, "slimkit_layers": [],
              "choice": {"artifacts_ms": {}, "chosen": "measured", "operators": 0, "candidates": 0},
              "agreement": {"in_steps": None, "reference": "r", "inputs": "i", "max_abs_difference": 0.0}}}}


@pytest.fixture
def fake_clock(monkeypatch):
    monkeypatch.setattr(choose_module, "time_forms", _fake_times)
    monkeypatch.setattr(choose_module, "_dense_network", lambda *a, **k: {
        "openvino_fp32": {"median": 6.0, "iqr": 0.1}, "openvino_int8": {"median": 3.0, "iqr": 0.1}})
    monkeypatch.setattr(choose_module, "cpu_identity", lambda: "test cpu")
    monkeypatch.setattr("slimkit.runtime.bench.engine_versus_dense", _fake_engine)


def test_a_target_run_writes_its_choice_trains_it_and_reports_it_against_its_measurement(tmp_path, fake_clock,
                                                                                          monkeypatch):
    monkeypatch.setenv("SLIMKIT_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    run = slimkit.run_recipe(Recipe.from_dict(RECIPE), out, progress=False)
    record = json.loads((out / "target.json").read_text())
    section = run.metrics["target"]
    assert record["section"]["predicted_ms"] == section["predicted_ms"] <= section["target_ms"] == 3.0 / 1.5
    chosen = Recipe.load(out / "target-recipe.yaml")
    assert chosen.to_yaml() == run.recipe.to_yaml() and chosen.target is None and chosen.measure.engines
    assert [parse_stage(stage) for stage in record["stages"]] == chosen.stages
    layers = {line["layer"]: line for line in section["layers"]}
    model = run.model
    for name, line in layers.items():  # the compressed model has each chosen form
        module = model.get_submodule(name)
        out_channels = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
        assert out_channels == line["out_channels"]
        assert (weight_quantization(module) is not None) == (line["form"] != "fp32")
        if line["form"].startswith("sparse_int8"):
            sparsity = LayerKind.parse(line["form"]).sparsity
            assert float((module.weight == 0).float().mean()) == pytest.approx(sparsity, abs=0.05)
    measured = section["measured"]
    assert measured["baseline"] == "openvino_int8" and measured["speedup"] == pytest.approx(3.0 / 1.8)
    assert measured["reached"] and measured["noise"] == pytest.approx(3.0 / 1.8 * (0.05 / 1.8 + 0.05 / 3.0))
    assert layers["features.3"]["measured_ms"] == 0.25
    assert "## Latency target" in (out / "report.md").read_text()

    def timed_again(*args, **kwargs):
        raise AssertionError("a resumed run reads its choice from target.json")

    monkeypatch.setattr(choose_module, "choose", timed_again)
    resumed = slimkit.run_recipe(Recipe.from_dict(RECIPE), out, resume=True, progress=False)
    assert resumed.recipe.to_yaml() == run.recipe.to_yaml()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(resumed.model.eval()(x), run.model.eval()(x))


def test_a_target_is_chosen_in_one_process(monkeypatch):
    monkeypatch.setattr("slimkit.train.distributed.current", lambda: type("DistInfo", (), {"enabled": True})())
    recipe = Recipe.from_dict(RECIPE)
    with pytest.raises(SlimkitError, match="in one process"):
        targeted_recipe(recipe, nn.Identity(), slimkit.load_data(recipe.data), recipe.objective.build(), [1, 8, 8],
                        None, resume=False)
