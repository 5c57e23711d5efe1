"""slimkit::QuantSparseConv2d: block-4 sparse int8 convs inside OpenVINO, against the int8 graph's fake-quant
forward (quant/int8_graph), which is what onnxruntime's int8 export is tested against too."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.models import resnet20
from slimkit.quant.int8_graph import int8_graph
from slimkit.quant.quantizers import UniformQuantizer
from slimkit.recipe import build_modifier, parse_stage
from slimkit.runtime.engine.dense_engines import OpenVinoModel
from slimkit.runtime.engine.export import export_openvino, openvino_core
from slimkit.runtime.engine.form import candidates, engine_form, prepared, runs_slimkit_operators
from slimkit.runtime.engine.operator_modules import EngineConv
from slimkit.sparsity.blocks import block_scores, expand_blocks, is_block_sparse
from slimkit.sparsity.pattern import connectivity_mask, extract_library, pattern_mask
from slimkit.sparsity.topk import layerwise_masks
from slimkit.train import TrainContext

pytest.importorskip("openvino")


def _block_sparse_int8(model: nn.Module, sparsity: float, example: torch.Tensor, skip_ends: bool = True,
                       patterns: bool = False) -> nn.Module:
    """Blocks of 4 input channels pruned by L1 norm per layer (or, with `patterns`, PatDNN's pattern and
    connectivity pruning with tiles of 4 input channels, r_c = 3.6), then 8-bit QAT quantizers initialised on a
    batch."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    pruned = dict(list(layers.items())[1:-1]) if skip_ends else layers
    with torch.no_grad():
        if patterns:
            library = extract_library(torch.cat([m.weight.reshape(-1, 9) for m in pruned.values()]), 8)
            masks = {n: connectivity_mask(m.weight, 3.6, block=4) & pattern_mask(m.weight, library, block=4)
                     for n, m in pruned.items()}
        else:
            masks = layerwise_masks({n: block_scores(m.weight.abs(), 4)[0] for n, m in pruned.items()}, sparsity)
            masks = {n: expand_blocks(masks[n], 4, m.weight.shape[1]) for n, m in pruned.items()}
        for n, m in pruned.items():
            m.weight.mul_(masks[n])
            assert is_block_sparse(m.weight, 4)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    every = {"skip_first_conv": False, "skip_last_linear": False}
    modifier = build_modifier(parse_stage({"quantize": {"method": "uniform", "bits": 8, "calibration_batches": 0,
                                                        **({} if skip_ends else {"layers": every})}}))
    modifier.attach(model, TrainContext(model, epochs=1, steps_per_epoch=1))
    model.train()(example)  # initialises the quantizers' steps
    return modifier.finalize(model).eval()


def _steps(graph: nn.Module) -> dict[str, float]:
    """The per-tensor quantizers' steps, in the order int8_graph added them (the output's last)."""
    return {n: float(m.step.detach()) for n, m in graph.named_children()
            if isinstance(m, UniformQuantizer) and m.channels == 1}


@pytest.mark.parametrize(("channels", "stride", "relu"), [(16, 1, True), (6, 2, True), (13, 1, False)])
def test_quantized_sparse_conv_equals_the_int8_graph(tmp_path, channels, stride, relu):
    torch.manual_seed(channels + stride)
    model = nn.Sequential(nn.Conv2d(channels, 12, 3, stride=stride, padding=1), nn.BatchNorm2d(12),
                          *([nn.ReLU()] if relu else []))
    model = _block_sparse_int8(model, 0.75, torch.randn(16, channels, 12, 12), skip_ends=False)
    calibration = [torch.randn(4, channels, 12, 12) for _ in range(2)]
    x = torch.randn(3, channels, 12, 12)
    graph = int8_graph(model, calibration)
    engine, lines = engine_form(model, (channels, 12, 12), calibration)
    assert [line["engine"] for line in lines] == ["slimkit::QuantSparseConv2d"]
    # its input quantizer, then the ReLU and the quantizer after it (or the quantizer of the conv's output)
    assert len(lines[0]["fused"]) == (3 if relu else 2) and lines[0]["fused"][0].startswith("int8_in"), lines
    with torch.no_grad():
        reference = graph(x)
        assert torch.equal(engine(x), reference)  # the torch form of the operator is the int8 graph's arithmetic
    info = export_openvino(model, tmp_path / "model.xml", (channels, 12, 12), calibration)
    got = OpenVinoModel(Path(info["model"]), tuple(x.shape), 2, core=openvino_core())(x)
    # int32 sums are exact; the epilogue multiplies once where the float conv rounds each product, so a
    # value on a rounding tie may land one step away: never more than one step of the output's grid
    step = list(_steps(graph).values())[-1]
    assert (got - reference).abs().max() <= step * 1.001
    assert (got == reference).float().mean() > 0.99


@pytest.mark.parametrize("rows", [1, 5, 70])
def test_quantized_sparse_linear_is_the_operator_over_rows_as_positions(tmp_path, rows):
    """A linear layer runs as a 1x1 QuantSparseConv2d whose positions are the batch's rows (70: two full tiles of
    32 and a partial one), and equals the int8 graph like a conv."""
    torch.manual_seed(rows)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 10))
    model = _block_sparse_int8(model, 0.8, torch.randn(16, 3, 4, 4), skip_ends=False)
    calibration = [torch.randn(8, 3, 4, 4) for _ in range(2)]
    x = torch.randn(rows, 3, 4, 4)
    graph = int8_graph(model, calibration)
    engine, lines = engine_form(model, (3, 4, 4), calibration)
    assert [(line["layer"], line["engine"]) for line in lines] == [("1", "slimkit::QuantSparseConv2d"),
                                                                   ("3", "slimkit::QuantSparseConv2d")]
    assert "input" not in lines[1]  # a linear hands on floats, not integers
    with torch.no_grad():
        reference = graph(x)
        assert torch.equal(engine(x), reference)
    info = export_openvino(model, tmp_path / "model.xml", (3, 4, 4), calibration)
    got = OpenVinoModel(Path(info["model"]), tuple(x.shape), 2, core=openvino_core())(x)
    step = list(_steps(graph).values())[-1]
    assert got.shape == reference.shape
    assert (got - reference).abs().max() <= step * 1.001
    assert (got == reference).float().mean() > 0.95


def test_resnet20_block_sparse_int8_in_openvino_matches_the_int8_graph(tmp_path):
    torch.manual_seed(0)
    model = _block_sparse_int8(resnet20(width=0.5), 0.9, torch.randn(16, 3, 32, 32))
    calibration = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    x = torch.randn(8, 3, 32, 32)
    graph = int8_graph(model, calibration)
    info = export_openvino(model, tmp_path / "model.xml", (3, 32, 32), calibration)
    ours = [line for line in info["slimkit_layers"] if line["engine"] == "slimkit::QuantSparseConv2d"]
    # every block conv, and the dense first conv too (3 input channels: one 4-channel group, which keeps the
    # graph in the operators' layout); the classifier stays OpenVINO's int8
    assert len(ours) == 19
    # each one after the first reads the integers the one before wrote (strided ones included)
    assert [line["input"] for line in ours[1:]] == ["the previous int8 layer's integers"] * 18, ours
    assert all(any(f.startswith("add") for f in line["fused"]) for line in ours if line["layer"].endswith("conv2"))
    got = OpenVinoModel(Path(info["model"]), tuple(x.shape), 2, core=openvino_core())(x)
    with torch.no_grad():
        reference = graph(x)
    logits_step = list(_steps(graph).values())[-1]
    assert (got - reference).abs().max() <= 2 * logits_step


def test_patdnn_patterns_in_blocks_of_4_run_the_int8_operator(tmp_path):
    """PatDNN's layout for int8: patterns and connectivity shared by 4 consecutive input channels make every
    pruned conv block-4 sparse (1 - 4/9/3.6 = 88% of its blocks zero), so the int8 operator runs it."""
    torch.manual_seed(3)
    model = _block_sparse_int8(resnet20(width=0.5), 0.0, torch.randn(16, 3, 32, 32), patterns=True)
    calibration = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    x = torch.randn(4, 3, 32, 32)
    info = export_openvino(model, tmp_path / "model.xml", (3, 32, 32), calibration)
    ours = [line for line in info["slimkit_layers"] if line["engine"] == "slimkit::QuantSparseConv2d"]
    assert len(ours) == 19, info["slimkit_layers"]
    graph = int8_graph(model, calibration)
    got = OpenVinoModel(Path(info["model"]), tuple(x.shape), 2, core=openvino_core())(x)
    with torch.no_grad():
        reference = graph(x)
    assert (got - reference).abs().max() <= 2 * list(_steps(graph).values())[-1]


def test_a_dense_quantized_model_has_no_structure_for_the_operators_and_exports_as_openvinos_own_int8(tmp_path):
    torch.manual_seed(1)
    model = _block_sparse_int8(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                             nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(576, 32),
                                             nn.Linear(32, 10)), 0.0, torch.randn(16, 3, 12, 12))
    assert not runs_slimkit_operators(model)  # no zero block anywhere: `slimkit export` writes it as ONNX Q/DQ
    calibration = [torch.randn(2, 3, 12, 12)]
    assert set(candidates(prepared(model, calibration))) == {"0"}  # the 3-channel conv could run, if faster
    engine, lines = engine_form(model, (3, 12, 12), calibration, chosen=())
    assert lines == [] and not any(isinstance(m, EngineConv) for m in engine.modules())


def test_a_quantized_model_needs_calibration_for_its_engine_form():
    model = _block_sparse_int8(nn.Sequential(nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1)), 0.9,
                               torch.randn(16, 8, 12, 12))
    with pytest.raises(SlimkitError, match="needs calibration batches"):
        engine_form(model, (8, 12, 12))


def test_prune_in_blocks_then_quantize_then_export_runs_the_int8_sparse_operator(tmp_path, digits_recipe, capsys):
    """The composition #20 asks for, as a user runs it: one recipe prunes in blocks of 4, fine-tunes in float,
    then quantizes (QAT in the last epoch), and `slimkit export` deploys it with slimkit::QuantSparseConv2d,
    matching the int8 graph and the fake-quant model within one step of the logits' grid."""
    import slimkit
    from slimkit.cli import main
    from slimkit.run_folder import calibration_batches

    digits_recipe["stages"] = [{"prune": {"method": "gmp", "sparsity": 0.9, "block": 4, "scope": "layer",
                                          "start_epoch": 0, "end_epoch": 1}},
                               {"quantize": {"method": "uniform", "bits": 8, "start_epoch": 3}}]
    slimkit.run_recipe(slimkit.Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    assert main(["export", str(tmp_path / "run")]) == 0, capsys.readouterr().err  # auto: openvino for this run
    manifest = json.loads((tmp_path / "run" / "engine" / "engine.json").read_text())
    lines = {line["layer"]: line for line in manifest["slimkit_layers"]}
    assert all(line["operator"] == "slimkit::QuantSparseConv2d" for line in (
        lines[name]["measured"] for name in ("features.3", "classifier.1"))), lines  # the block-sparse layers
    model = slimkit.load(tmp_path / "run" / "model.pt").eval()
    calibration = calibration_batches(str(tmp_path / "run"), 8)  # the batches export calibrated on
    graph = int8_graph(model, calibration)
    x = torch.rand(16, *manifest["input_shape"])
    written = OpenVinoModel(tmp_path / "run" / "engine" / "model.xml", tuple(x.shape), 2, core=openvino_core())(x)
    chosen = {name for name, line in lines.items() if line["engine"].startswith("slimkit::")}
    again = export_openvino(model, tmp_path / "again" / "model.xml", tuple(manifest["input_shape"]), calibration,
                            chosen=chosen)
    assert torch.equal(written, OpenVinoModel(Path(again["model"]), tuple(x.shape), 2, core=openvino_core())(x))
    # every candidate as the operator: the int8 graph's arithmetic
    info = export_openvino(model, tmp_path / "all" / "model.xml", tuple(manifest["input_shape"]), calibration)
    assert {line["engine"] for line in info["slimkit_layers"]} == {"slimkit::QuantSparseConv2d"}
    got = OpenVinoModel(Path(info["model"]), tuple(x.shape), 2, core=openvino_core())(x)
    with torch.no_grad():
        reference, fake_quant = graph(x), model(x)
    step = list(_steps(graph).values())[-1]
    assert (got - reference).abs().max() <= step * 1.001  # within one logits step
    assert (got - fake_quant).abs().max() <= step * 1.001  # and of the QAT model the run trained


def test_openvino_node_counters_name_each_operator_node(tmp_path):
    from slimkit.runtime.engine.profile import node_times, profile_openvino

    torch.manual_seed(2)
    model = _block_sparse_int8(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                             nn.Conv2d(8, 4, 1)), 0.9, torch.randn(16, 8, 12, 12))
    info = export_openvino(model, tmp_path / "model.xml", (8, 12, 12), [torch.randn(4, 8, 12, 12)])
    rows = node_times(info["model"], (2, 8, 12, 12), threads=1, runs=3)
    ours = [r for r in rows if r["node"] == "QuantSparseConv2d"]  # the pruned conv: the ends stay dense
    assert [r["name"] for r in ours] == ["1"], rows  # the node is named after its layer
    assert all(r["kernel"].startswith("ref") and r["ms"] > 0 for r in ours), rows
    assert len({r["name"] for r in rows}) == len(rows)  # one row per executed node
    summed = profile_openvino(info["model"], (2, 8, 12, 12), threads=1, runs=3)
    assert {(r["node"], r["nodes"]) for r in summed if r["node"] == "QuantSparseConv2d"} == {("QuantSparseConv2d", 1)}


def test_a_quantized_sparse_linear_exports_for_any_batch_size(tmp_path):
    """The operator's reshapes keep the batch dynamic: exported once, the IR runs at other batch sizes."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 10))
    model = _block_sparse_int8(model, 0.8, torch.randn(16, 3, 4, 4), skip_ends=False)
    calibration = [torch.randn(8, 3, 4, 4) for _ in range(2)]
    graph = int8_graph(model, calibration)
    info = export_openvino(model, tmp_path / "model.xml", (3, 4, 4), calibration)
    assert any(line["engine"] == "slimkit::QuantSparseConv2d" for line in info["slimkit_layers"])
    for batch in (1, 64):
        x = torch.randn(batch, 3, 4, 4)
        got = OpenVinoModel(Path(info["model"]), tuple(x.shape), 2, core=openvino_core())(x)
        with torch.no_grad():
            assert (got - graph(x)).abs().max() <= list(_steps(graph).values())[-1] * 1.001
