"""measure.hardware end to end: a sparse, 2-bit MLP trained on digits gets a hardware section in its report and
in `slimkit info`, and `slimkit export --format truth-tables` writes tables that the saved model's quantized
forward reproduces."""

import itertools
import json

import pytest
import torch

import slimkit
from slimkit.cli import main
from slimkit.pipeline import run_recipe
from slimkit.recipe import Recipe

pytestmark = pytest.mark.slow  # an end-to-end run (about 6 s of training)

RECIPE = {
    "name": "hardware-test",
    "model": {"name": "mlp", "options": {"hidden": [8, 6]}},  # layers 1 (64 -> 8), 3 (8 -> 6), 5 (6 -> 10)
    "data": {"name": "digits", "batch_size": 64},
    "baseline": {"epochs": 1, "lr": 0.05},
    "train": {"epochs": 2, "lr": 0.02},
    "stages": [{"prune": {"method": "nm", "n": 1, "m": 4}},
               {"quantize": {"method": "uniform", "bits": 2, "first_last_bits": 2}}],
    "measure": {"batch_sizes": [1], "repeats": 1, "warmup": 1,
                "hardware": {"systolic": {"rows": 4, "cols": 4, "batch": 64}, "lut": {}, "arithmetic": {}}},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("hardware-run")
    run_recipe(Recipe.from_dict(RECIPE), out, progress=False)
    return out


def test_report_and_metrics_carry_the_hardware_section(run_dir):
    section = json.loads((run_dir / "metrics.json").read_text())["hardware"]
    systolic = section["systolic"]
    assert systolic["reference"] == "dense model"
    names = [layer["name"] for layer in systolic["compressed"]["layers"]]
    assert names == ["1", "3", "5"]
    # 1:4 on layers 1 and 3 keeps a quarter of the weights (2-bit rounding may zero a few more: the models
    # cost the weights as the forward uses them), so at batch 64 those layers need fewer cycles than the dense
    # baseline's (at batch 1 a linear layer's passes are all fill and drain)
    for i in (0, 1):
        layer, dense = systolic["compressed"]["layers"][i], systolic["dense"]["layers"][i]
        assert layer["compute_cycles"] < dense["compute_cycles"]
        assert layer["performed_macs"] <= dense["performed_macs"] / 4
    lut = {layer["name"]: layer for layer in section["lut"]["layers"]}
    assert lut["3"]["max_fan_in"] <= 2 and lut["3"]["input_bits"] == 2 and lut["3"]["feasible"]
    assert lut["1"]["max_fan_in"] > 10 and not lut["1"]["feasible"]  # > 10 x 2 address bits > 20
    assert [layer["form"] for layer in section["arithmetic"]["layers"]] == ["integer"] * 3
    for layer in section["arithmetic"]["layers"]:  # 2-bit signed codes are -2..1: magnitudes of 1 or 2 bits
        assert layer["sign_magnitude"]["magnitude_bits"] <= 2 and layer["csd"]["nonzero_digits"] > 0
    assert section["arithmetic"]["totals"]["csd_energy_pj"] > 0
    report = (run_dir / "report.md").read_text()
    assert "## Hardware (analytical cost models)" in report and "### LUT mapping" in report
    assert "Integer weights stored sign-magnitude" in report
    assert "![hardware cost against dense](hardware.png)" in report and (run_dir / "hardware.png").stat().st_size


def test_info_shows_the_hardware_section(run_dir, capsys):
    assert main(["info", str(run_dir), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["hardware"]["systolic"]["reference"] == "the same layers with dense weights"
    assert main(["info", str(run_dir)]) == 0
    assert "Systolic array: 4x4 PEs, weight stationary" in capsys.readouterr().out


def test_exported_truth_tables_match_the_saved_models_quantized_forward(run_dir, capsys):
    out = run_dir / "tables.json"
    assert main(["export", str(run_dir), "--format", "truth-tables", "--layer", "3", "--out", str(out)]) == 0
    [tables] = json.loads(out.read_text())["layers"]
    model = slimkit.load(run_dir / "model.pt").eval()
    layer, reader = model.get_submodule("3"), model.get_submodule("5")
    grid, values = torch.tensor(tables["input_values"]), torch.tensor(tables["output"]["values"])
    assert tables["output"]["read_by"] == "5" and len(tables["neurons"]) == 6
    for neuron in tables["neurons"]:
        cols = neuron["inputs"]
        combos = list(itertools.product(range(len(grid)), repeat=len(cols)))
        x = torch.zeros(len(combos), 8)
        x[:, cols] = grid[torch.tensor(combos)].reshape(len(combos), len(cols))
        seen = {}
        handles = [layer.register_forward_pre_hook(lambda m, args, x=x: (x,)),
                   reader.register_forward_pre_hook(lambda m, args, seen=seen: seen.setdefault("x", args[0].clone()))]
        try:
            with torch.no_grad():
                model(torch.zeros(len(combos), 1, 8, 8))
        finally:
            for h in handles:
                h.remove()
        assert torch.equal(values[torch.tensor(neuron["table"])], seen["x"][:, neuron["index"]])


def test_export_refuses_a_layer_whose_tables_are_too_large(run_dir, capsys):
    assert main(["export", str(run_dir), "--format", "truth-tables", "--out", str(run_dir / "all.json")]) == 2
    err = capsys.readouterr().err
    assert "layer '1': neuron" in err and "at 2 input bits, a truth table of 2^" in err and "the limit is 2^20" in err
