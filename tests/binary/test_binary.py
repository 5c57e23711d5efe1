"""Binary layers and methods as a user runs them: conversion, schedules, eval determinism, state, recipes."""

import math

import pytest
import torch
from torch import nn

import slimkit
from slimkit.binary import BinaryConv2d, BinaryLinear
from slimkit.binary.modifiers import recu_tau
from slimkit.metrics import measure, precision_summary
from slimkit.models import resnet18, resnet20
from slimkit.recipe import Recipe, build_modifier, parse_stage
from slimkit.train import TrainContext

METHODS = ["xnor", "irnet", "rbnn", "recu", "siman"]


def converted(method: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    model = resnet20(in_channels=1, block="bireal", activation="hardtanh", head_bn=True)
    modifier = build_modifier(parse_stage({"binarize": {"method": method, **options}}))
    modifier.attach(model, TrainContext(model, epochs=10, steps_per_epoch=4))
    return model, modifier


@pytest.mark.parametrize("method", METHODS)
def test_default_conversion_keeps_first_conv_and_classifier_full_precision(method):
    model, modifier = converted(method)
    binary = [n for n, m in model.named_modules() if isinstance(m, BinaryConv2d | BinaryLinear)]
    assert len(binary) == 18 and "conv1" not in binary and not isinstance(model.fc, BinaryLinear)
    assert binary == list(modifier.layers)
    model.eval()
    for layer in modifier.layers.values():  # binary weights are exactly +-1, ready for bit packing
        signs, _ = layer.weight_binarizer(layer.weight)
        assert set(signs.unique().tolist()) <= {-1.0, 1.0}
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("method", METHODS)
def test_state_dict_round_trip_gives_identical_eval_outputs(method):
    model, _ = converted(method, seed=0)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(model(torch.randn(8, 1, 12, 12)), torch.randint(0, 10, (8,))).backward()
        opt.step()
    other, _ = converted(method, seed=1)
    other.load_state_dict(model.state_dict())
    state = other.state_dict()
    for key in ("R1", "R2", "theta", "alpha", "B", "tau", "percent"):
        for name, value in model.state_dict().items():
            if name.endswith(f"weight_binarizer.{key}"):
                assert torch.equal(state[name], value), name
    x = torch.randn(4, 1, 12, 12)
    assert torch.equal(model.eval()(x), other.eval()(x))


def test_rbnn_rotates_once_per_epoch_and_never_in_eval():
    model, modifier = converted("rbnn")
    layer = model.layer2[0].conv1
    x = torch.randn(4, 1, 12, 12)
    modifier.on_epoch_start(0, None)
    model.train()
    before = layer.weight_binarizer.R1.clone()
    model(x)
    after_first = layer.weight_binarizer.R1.clone()
    assert not torch.equal(before, after_first)  # first batch of the epoch rotates
    model(x)
    assert torch.equal(layer.weight_binarizer.R1, after_first)  # later batches do not
    modifier.on_epoch_start(1, None)
    model.eval()
    out = model(x)
    assert torch.equal(layer.weight_binarizer.R1, after_first) and torch.equal(model(x), out)


def test_siman_eval_uses_stored_code_and_leaves_weights_alone():
    model, modifier = converted("siman")
    modifier.on_epoch_start(0, None)
    model.train()
    model(torch.randn(4, 1, 12, 12))  # training forward: projection and a fresh B
    model.eval()
    layer = model.layer3[1].conv2
    weights = layer.weight.detach().clone()
    x = torch.randn(3, 1, 12, 12)
    out = model(x)
    assert torch.equal(layer.weight, weights)  # eval never projects
    with torch.no_grad():
        layer.weight.add_(torch.randn_like(layer.weight))
    assert torch.equal(model(x), out)  # forward value is 2B - 1 with the stored B


def test_schedules_follow_the_epoch():
    _, recu = converted("recu")
    recu.epochs = 600
    recu.on_epoch_start(300, None)
    assert next(iter(recu.layers.values())).weight_binarizer.tau.item() == pytest.approx(recu_tau(300, 600, .85, .99))
    _, irnet = converted("irnet", t_min=1e-2, t_max=10.0)
    irnet.epochs = 1000
    irnet.on_epoch_start(500, None)
    assert (irnet.surrogate.t, irnet.surrogate.k) == pytest.approx((0.31623, 3.1623), abs=1e-4)
    _, rbnn = converted("rbnn", rotate_every=3)
    rbnn.on_epoch_start(4, None)
    assert not any(layer.weight_binarizer.rotate_next for layer in rbnn.layers.values())
    rbnn.on_epoch_start(6, None)
    assert all(layer.weight_binarizer.rotate_next for layer in rbnn.layers.values())
    assert rbnn.input_surrogate.t == 1.0 and rbnn.input_surrogate.k == 1.0


def test_accounting_counts_bops_and_one_bit_weights():
    fp = measure(resnet20(in_channels=1, block="bireal", head_bn=True), (1, 28, 28), latency=False)
    model, _ = converted("xnor")
    bnn = measure(model, (1, 28, 28), latency=False)
    binary_macs = sum(layer.macs for layer in bnn.layers if layer.weight_bits == 1)
    assert bnn.macs == fp.macs and bnn.bops == binary_macs and bnn.fp_macs == fp.macs - binary_macs
    assert bnn.ops == pytest.approx(bnn.fp_macs + binary_macs / 64)
    binary = [math.prod(layer.shape) for layer in bnn.layers if layer.weight_bits == 1]
    # XNOR adds no parameters: each binary weight tensor shrinks from 4 bytes to 1 bit per entry
    assert bnn.compressed_bytes == fp.compressed_bytes - sum(4 * n - math.ceil(n / 8) for n in binary)
    table = precision_summary(bnn.to_dict()["layers"])
    assert "| layer2.0.conv1 | 1 | 1 |" in table and "| conv1 | 32 | 32 |" in table
    w1a32, _ = converted("xnor", binarize_activations=False)
    m = measure(w1a32, (1, 28, 28), latency=False)
    assert m.bops == 0 and all(layer.input_bits == 32 for layer in m.layers)
    assert any(layer.weight_bits == 1 for layer in m.layers)


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_from_its_recipe_and_reloads(tmp_path, method):
    shorter = ["train.milestones=[1]"] if method == "xnor" else []  # its lr drops sit at epochs of the 6
    recipe = Recipe.load(f"{method}-fashion", ["data.name=digits", "data.train_subset=null", "train.epochs=2",
                                              "measure.repeats=2", "measure.batch_sizes=[1]", *shorter])
    run = slimkit.run_recipe(recipe, tmp_path / method, progress=False)
    assert run.metrics["stages"][0]["binary_layers"]
    assert "Precision summary" in (tmp_path / method / "report.md").read_text()
    reloaded = slimkit.load(tmp_path / method / "model.pt")
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(reloaded(x), run.model.eval()(x))


def test_bnn_model_options():
    model = resnet18(num_classes=10, stem_activation="none", head_bn=True, bn_init=1e-8, activation="hardtanh")
    assert isinstance(model.act1, nn.Identity) and isinstance(model.head_bn, nn.BatchNorm1d)
    assert model.layer2[0].shortcut[0].kernel_size == (1, 1)  # ResNet-18's 1x1 conv + BN downsample
    assert torch.all(model.layer1[0].bn1.weight == 1e-8)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 20  # 17 3x3 convs + 3 downsamples
    pooled = resnet20(shortcut="avgpool").layer2[0].shortcut
    x = torch.randn(1, 16, 8, 8)
    assert torch.allclose(pooled(x)[:, 8:24], nn.functional.avg_pool2d(x, 2))
    siman_style = resnet20(block="bireal", activation="prelu", stem_activation="relu")
    assert isinstance(siman_style.layer1[0].act1, nn.PReLU) and isinstance(siman_style.act1, nn.ReLU)
