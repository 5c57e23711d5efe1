"""Int8 execution: the integer graph (BatchNorm folded, every tensor quantized) exported to ONNX, where
onnxruntime must run every compute op as an integer kernel and agree with the PyTorch fake-quant graph."""

import platform

import pytest
import torch
from torch import nn

import slimkit
from slimkit.data import load_data
from slimkit.environment import has_int8_dot_product
from slimkit.quant import UniformQuantizer
from slimkit.quant.attach import quantize_layer
from slimkit.quant.int8_graph import fold_batchnorm, int8_graph
from slimkit.recipe import DataConfig, Recipe

pytest.importorskip("onnxruntime")
from slimkit.quant.onnx_export import FLOAT_COMPUTE_OPS, OnnxModel, export_onnx, optimized_ops


def _ptq(tmp_path, model: dict, bits: int = 8):
    recipe = Recipe.from_dict({
        "name": "int8", "model": model, "data": {"name": "digits", "batch_size": 64},
        "baseline": {"epochs": 3, "lr": 0.05}, "train": {"epochs": 0},
        "stages": [{"quantize": {"method": "uniform", "bits": bits, "calibration_batches": 4}}],
        "measure": {"batch_sizes": [1], "repeats": 1, "warmup": 1}})
    return slimkit.run_recipe(recipe, tmp_path / f"{model['name']}-{bits}", progress=False)


@pytest.fixture(scope="module")
def digits():
    bundle = load_data(DataConfig(name="digits"))
    train = torch.stack([bundle.train[i][0] for i in range(256)])
    test = [bundle.test[i] for i in range(len(bundle.test))]
    return [train[i:i + 64] for i in range(0, 256, 64)], torch.stack([x for x, _ in test]), \
        torch.tensor([y for _, y in test])


def test_batchnorm_folds_exactly_onto_the_weight_grid():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
    bn.weight.data = torch.tensor([1.5, -0.7, 0.2, 2.0, -1.1, 0.9])  # negative gammas flip the grid
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
    bn.eval()
    weight_q = UniformQuantizer(8, channels=6, signed=True)
    weight_q.calibrate(conv.weight.detach())
    quantize_layer(conv, weight_q, nn.Identity(), 8, 8)
    conv.eval()
    x = torch.randn(4, 3, 7, 7)
    folded = fold_batchnorm(conv, bn)
    expected = bn(conv(x))
    assert torch.allclose(folded(x), expected, atol=1e-5, rtol=1e-5)
    integers = folded.layer.weight / folded.step.reshape(-1, 1, 1, 1)  # still on an 8-bit grid per channel
    assert torch.allclose(integers, integers.round(), atol=1e-3) and integers.abs().max() <= 128


@pytest.mark.slow
@pytest.mark.parametrize("model", [{"name": "lenet", "width": 0.5}, {"name": "resnet20", "width": 0.5}])
def test_onnxruntime_runs_every_layer_in_int8_and_matches(tmp_path, digits, model):
    calibration, x, y = digits
    qat = _ptq(tmp_path, model).model.eval()
    path = export_onnx(qat, tmp_path / "model.onnx", (1, 8, 8), calibration=calibration)
    ops = optimized_ops(path)
    convs = sum(isinstance(m, nn.Conv2d) for m in qat.modules())
    assert ops.get("QLinearConv") == convs  # every conv is an integer kernel ...
    assert ops.get("QGemm", 0) + ops.get("QLinearMatMul", 0) >= 1
    assert not set(ops) & set(FLOAT_COMPUTE_OPS), ops  # ... and so is every add, pool and linear
    if model["name"] == "resnet20":
        assert ops.get("QLinearAdd") == 9  # the residual sums

    graph = int8_graph(qat, calibration)
    reference, got, fake_quant = graph(x), OnnxModel(path)(x), qat(x)
    # the integer kernels agree with the fake-quant integer graph up to rare rounding flips, where the CPU
    # has an exact int8 dot product; without VNNI onnxruntime's vpmaddubsw path saturates int16 pair sums
    # (onnxruntime issues #6004, #16105), which only the accuracy check below tolerates
    if has_int8_dot_product() or platform.machine() not in ("x86_64", "AMD64"):
        assert (got.argmax(1) == reference.argmax(1)).float().mean() > 0.95
        assert (got - reference).abs().mean() < 0.02 * reference.abs().max()
    # and the integer graph keeps the QAT model's accuracy
    accuracy = {name: (out.argmax(1) == y).float().mean().item()
                for name, out in (("onnx", got), ("graph", reference), ("qat", fake_quant))}
    assert accuracy["onnx"] > accuracy["qat"] - 0.03 and accuracy["graph"] > accuracy["qat"] - 0.03, accuracy


@pytest.mark.slow
def test_int8_graph_leaves_the_model_alone(tmp_path, digits):
    calibration, x, _ = digits
    qat = _ptq(tmp_path, {"name": "resnet20", "width": 0.25}).model.eval()
    before = {k: v.clone() for k, v in qat.state_dict().items()}
    expected = qat(x)
    int8_graph(qat.train(), calibration)
    assert qat.training and all(torch.equal(before[k], v) for k, v in qat.state_dict().items())
    assert torch.equal(qat.eval()(x), expected)


@pytest.mark.slow
def test_export_says_what_it_needs(tmp_path, digits):
    calibration, _, _ = digits
    eight = _ptq(tmp_path, {"name": "lenet", "width": 0.5}).model
    with pytest.raises(slimkit.SlimkitError, match="calibration batches"):
        export_onnx(eight, tmp_path / "model.onnx", (1, 8, 8))
    four = _ptq(tmp_path, {"name": "lenet", "width": 0.5}, bits=4).model
    with pytest.raises(slimkit.SlimkitError, match="8-bit uniform"):
        export_onnx(four, tmp_path / "four.onnx", (1, 8, 8), calibration=calibration)


@pytest.mark.slow
def test_export_command(tmp_path, capsys):
    from slimkit.cli import main

    run = _ptq(tmp_path, {"name": "resnet20", "width": 0.25})
    assert main(["export", str(run.out_dir)]) == 0
    printed = capsys.readouterr().out
    assert (run.out_dir / "model.onnx").exists() and "QLinearConv x19" in printed and "float kernels" not in printed
    alone = tmp_path / "alone.pt"
    alone.write_bytes((run.out_dir / "model.pt").read_bytes())
    assert main(["export", str(alone)]) == 2
    assert "holds no recipe.yaml" in capsys.readouterr().err
