"""slimkit on the user's side: their models, data, losses and training loops (models and data in
tests/user_code.py, none from the zoo). Each test checks the class of a failure a new user ran into: data
ignored, targets cast, scores from an assumed cross-entropy, a loop that trains nothing, a layer emptied."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import slimkit
import user_code
from slimkit.cli import main
from slimkit.errors import SlimkitError
from slimkit.recipe import Recipe
from slimkit.sparsity.masks import get_mask, masked_layers
from slimkit.sparsity.topk import global_masks, keep_count


def _recipe(stages: list, epochs: int = 3, baseline: int | None = None, lr: float = 0.05, batch: int = 32,
            optimizer: str = "sgd") -> Recipe:
    train = {"epochs": epochs, "lr": lr, "optimizer": optimizer, "weight_decay": 0.0}
    return Recipe.from_dict({
        "name": "own", "data": {"name": "digits", "batch_size": batch},  # replaced by the user's data
        "baseline": {**train, "epochs": baseline} if baseline else None, "train": train, "stages": stages,
        "measure": {"batch_sizes": [2], "repeats": 1, "warmup": 1}})


def _zeros(module: nn.Module) -> int:
    return int((module.weight == 0).sum())


# --- compress() on the user's data and objective ---------------------------------------------------------

def test_regression_mlp_trains_on_the_users_data_with_their_loss():
    torch.manual_seed(0)
    data = user_code.regression_data()
    stages = [{"prune": {"method": "gmp", "sparsity": 0.8, "scope": "layer", "end_epoch": 3}}]
    run = slimkit.compress(user_code.regression_model(), data["train"], _recipe(stages, epochs=5, baseline=5,
                                                                                lr=0.01, optimizer="adam"),
                           val_data=data["val"], test_data=data["test"], loss_fn=F.mse_loss, progress=False)
    m = run.metrics
    assert (m["data"]["train"], m["data"]["val"], m["data"]["test"]) == (358, 77, 77)  # theirs, not digits
    assert m["objective"] == {"loss": "mse_loss", "metric": None} and m["reference"] == "trained"
    comp = m["models"]["compressed"]
    assert "test_acc" not in comp
    x, y = data["test"].tensors
    with torch.no_grad():
        assert comp["test_loss"] == pytest.approx(F.mse_loss(run.model(x), y).item(), rel=1e-5)
    assert comp["test_loss"] < 0.5 * y.var().item()  # it learned the float targets, never cast to classes
    pruned = [run.model[0], run.model[2]]  # the last linear stays dense by default
    assert [_zeros(layer) for layer in pruned] == [round(0.8 * layer.weight.numel()) for layer in pruned]
    assert "dense (trained baseline)" in run.report.table() and "test loss" in run.report.table()


def test_float_targets_with_the_default_loss_are_an_error_not_a_cast():
    data = user_code.regression_data(n=64)
    with pytest.raises(SlimkitError, match=r"float.*pass loss_fn"):
        slimkit.compress(user_code.regression_model(), data["train"], _recipe([], epochs=1), progress=False)


def test_hand_written_cnn_on_a_user_dataset_of_colour_images():
    torch.manual_seed(0)
    train, val, test = user_code.cnn_data()
    stages = [{"prune": {"method": "magnitude", "sparsity": 0.5, "scope": "layer"}}]
    run = slimkit.compress(user_code.SmallCNN(), train, _recipe(stages, epochs=4), val_data=val, test_data=test,
                           progress=False)
    m = run.metrics
    assert m["data"]["input_shape"] == [3, 12, 12] and m["data"]["test"] == 90
    with torch.no_grad():
        hits = (run.model(test.images).argmax(1) == test.labels).sum().item()
    assert m["models"]["compressed"]["test_acc"] == hits / 90  # the user's test split, exactly
    assert hits / 90 > 0.6
    assert _zeros(run.model.conv2) == round(0.5 * run.model.conv2.weight.numel())
    # no baseline: the dense column is the model as given, and no quality change is claimed against it
    table = run.report.table()
    assert "dense (as given)" in table
    assert next(r for r in run.report.rows() if r[0] == "test accuracy")[3] == "n/a"


def test_token_model_with_dict_batches_and_logits_outputs():
    torch.manual_seed(0)
    data = user_code.token_data()
    stages = [{"prune": {"method": "magnitude", "sparsity": 0.5, "scope": "layer"}}]
    run = slimkit.compress(user_code.TokenTagger(), data["train"], _recipe(stages, epochs=6, lr=0.5),
                           val_data=data["val"], test_data=data["test"], progress=False)
    m = run.metrics
    assert m["data"]["input_shape"] == {"input_ids": [10], "attention_mask": [10]}
    test = data["test"]
    with torch.no_grad():
        logits = run.model(test.ids, test.mask).logits
    counted = test.labels != -100
    expected = ((logits.argmax(-1) == test.labels) & counted).sum().item() / counted.sum().item()
    assert m["models"]["compressed"]["test_acc"] == pytest.approx(expected, abs=1e-12)  # padding not counted
    assert expected > 0.4  # chance is 0.25
    assert _zeros(run.model.mix) == round(0.5 * run.model.mix.weight.numel())
    measured = slimkit.measure(run.model, {"input_ids": test.ids[:1], "attention_mask": test.mask[:1]},
                               latency=False)
    assert measured.macs == 10 * (32 * 32 + 32 * 4)


@pytest.mark.parametrize("data", [np.zeros((4, 3)), [(torch.zeros(3), 0)], object()])
def test_data_slimkit_does_not_understand_is_an_error_naming_it(data):
    with pytest.raises(SlimkitError, match=r"^data: a .* is not data slimkit reads"):
        slimkit.compress(user_code.regression_model(), data, _recipe([]), progress=False)


def test_val_data_without_training_data_is_an_error():
    with pytest.raises(SlimkitError, match="val_data and test_data go with"):
        slimkit.compress(user_code.regression_model(), "digits", _recipe([]), val_data=TensorDataset(torch.zeros(2)))


# --- the loop-facing API -----------------------------------------------------------------------------

def _loader(data, batch: int = 32) -> DataLoader:
    return DataLoader(data, batch_size=batch, shuffle=False)


def test_readme_loop_example_prunes_a_regression_model_exactly():
    torch.manual_seed(0)
    model, loader = user_code.regression_model(), _loader(user_code.regression_data()["train"])
    stage = {"prune": {"method": "gmp", "sparsity": 0.75, "scope": "layer"}}
    compression = slimkit.prepare(model, stage, steps_per_epoch=len(loader), epochs=3)
    optimizer = compression.optimizer(torch.optim.SGD, lr=0.05)
    for _ in range(3):
        for x, y in loader:
            out = model(x)
            loss = F.mse_loss(out, y) + compression.loss(out, (x, y))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model = compression.finalize()
    assert compression.step_count == 3 * len(loader) and masked_layers(model) == {}
    assert [_zeros(model[0]), _zeros(model[2])] == [round(0.75 * 6 * 32), round(0.75 * 32 * 32)]


def test_snip_scores_come_from_the_users_loss():
    torch.manual_seed(0)
    model, loader = user_code.regression_model(), _loader(user_code.regression_data()["train"])
    reference = copy.deepcopy(model)
    stage = {"prune": {"method": "snip", "sparsity": 0.5, "scope": "layer"}}
    compression = slimkit.prepare(model, stage, steps_per_epoch=len(loader), epochs=1, data=loader,
                                  loss_fn=F.mse_loss)
    compression.optimizer(torch.optim.SGD, lr=0.01)  # SNIP prunes as training starts
    x, y = next(iter(loader))
    F.mse_loss(reference(x), y).backward()  # the independent reference: |w * dMSE/dw| on the first batch
    for index in (0, 2):
        w = reference[index].weight
        scores = (w * w.grad).abs()
        assert scores.count_nonzero() > 0
        expected = torch.zeros(scores.numel(), dtype=torch.bool)
        expected[torch.sort(scores.reshape(-1), descending=True, stable=True).indices[:keep_count(w.numel(), 0.5)]] = 1
        assert torch.equal(get_mask(model[index]).mask.reshape(-1), expected)


def test_gradient_criteria_without_data_say_what_to_pass():
    model = user_code.SmallCNN()
    compression = slimkit.prepare(model, {"channels": {"method": "l1", "ratio": 0.5}}, steps_per_epoch=4, epochs=2)
    with pytest.raises(SlimkitError, match="needs training batches; pass data="):
        compression.optimizer(torch.optim.SGD, lr=0.1)


def test_optg_score_learning_rate_scale_applies_to_a_plain_optimizer():
    torch.manual_seed(0)
    model, loader = user_code.regression_model(), _loader(user_code.regression_data()["train"])
    stage = {"prune": {"method": "optg", "sparsity": 0.5, "width": 1.0}}  # a ramp the whole run wide: scale 0.01 at 0
    compression = slimkit.prepare(model, stage, steps_per_epoch=len(loader), epochs=4)
    optimizer = compression.wrap(torch.optim.SGD(model.parameters(), lr=0.1))  # built by the user, after prepare
    group = next(g for g in optimizer.param_groups if g.get("name") == "prune:optg")
    scale = group["lr_scale"]
    assert scale == pytest.approx(0.01) and group["weight_decay"] == 0
    scores = group["params"][0]
    x, y = next(iter(loader))
    F.mse_loss(model(x), y).backward()
    before, grad = scores.detach().clone(), scores.grad.clone()
    optimizer.step()
    assert torch.allclose(scores.detach(), before - 0.1 * scale * grad, atol=1e-7)
    assert group["lr"] == 0.1  # the scale is applied for the step only


def test_an_optimizer_built_before_prepare_is_refused():
    from slimkit.models import lenet

    model = lenet(in_channels=1, input_size=8)
    stale = torch.optim.SGD(model.parameters(), lr=0.1)
    compression = slimkit.prepare(model, {"binarize": {"method": "xnor"}}, steps_per_epoch=2, epochs=1)
    with pytest.raises(SlimkitError, match="tensors the model no longer uses"):
        compression.wrap(stale)


def test_wrapped_optimizer_and_a_manual_step_do_not_double_count():
    model = user_code.regression_model()
    compression = slimkit.prepare(model, {"prune": {"method": "magnitude", "sparsity": 0.5}}, steps_per_epoch=2,
                                  epochs=1)
    compression.optimizer(torch.optim.SGD, lr=0.1)
    with pytest.raises(SlimkitError, match="already advances"):
        compression.step()


CHANNELS = {"channels": {"method": "l1", "ratio": 0.5, "scope": "layer", "start_epoch": 1}}


def _train_channels(model, batches, steps, compression=None, optimizer=None):
    compression = compression or slimkit.prepare(model, CHANNELS,
                                                 steps_per_epoch=len(batches), epochs=3, data=batches)
    optimizer = optimizer or compression.optimizer(torch.optim.SGD, lr=0.05, momentum=0.9)
    while compression.step_count < steps:
        x, y = batches[compression.step_count % len(batches)]
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return compression, optimizer


def test_channel_pruning_keeps_the_users_optimizer_on_the_live_parameters():
    torch.manual_seed(0)
    train = user_code.cnn_data()[0]
    batches = list(DataLoader(train, batch_size=40))
    model = user_code.SmallCNN()
    compression, optimizer = _train_channels(model, batches, len(batches))  # the round runs at the epoch's end
    assert model.conv1.out_channels == 4 and model.conv2.out_channels == 8
    tracked = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert tracked == {id(p) for p in model.parameters()}
    before = model.conv2.weight.detach().clone()
    _train_channels(model, batches, len(batches) + 1, compression, optimizer)
    assert not torch.equal(before, model.conv2.weight)  # training goes on changing the sliced weights


def test_mid_training_checkpoint_resumes_bit_identically():
    torch.manual_seed(0)
    batches = list(DataLoader(user_code.cnn_data()[0], batch_size=40))
    initial = user_code.SmallCNN()
    steps, cut = 3 * len(batches), len(batches) + 2  # the checkpoint falls after the pruning round

    straight = copy.deepcopy(initial)
    _train_channels(straight, batches, steps)

    first = copy.deepcopy(initial)
    compression, optimizer = _train_channels(first, batches, cut)
    saved = {"model": copy.deepcopy(first.state_dict()), "compression": compression.state_dict(),
             "optimizer": copy.deepcopy(optimizer.state_dict())}
    resumed = user_code.SmallCNN()  # a fresh, unpruned model, as a new process would build
    compression = slimkit.prepare(resumed, CHANNELS,
                                  steps_per_epoch=len(batches), epochs=3, data=batches, state=saved["compression"])
    resumed.load_state_dict(saved["model"])
    optimizer = compression.optimizer(torch.optim.SGD, lr=0.05, momentum=0.9)
    optimizer.load_state_dict(saved["optimizer"])
    _train_channels(resumed, batches, steps, compression, optimizer)
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(),
                                                 strict=True))


def test_qat_calibrates_on_dict_batches():
    torch.manual_seed(0)
    loader = DataLoader(user_code.token_data()["train"], batch_size=32)
    model = user_code.TokenTagger()
    stage = {"quantize": {"method": "uniform", "bits": 8, "layers": {"skip_last_linear": False}}}
    compression = slimkit.prepare(model, stage, steps_per_epoch=len(loader), epochs=1, data=loader)
    quantizer = model.mix.input_quantizer
    assert bool(quantizer.initialized)
    batch = next(iter(loader))
    with torch.no_grad():
        h = torch.relu(model.embed(batch["input_ids"]) * batch["attention_mask"].unsqueeze(-1))
    # calibrated on the layer's real inputs: the grid's top covers most of their range
    assert 0.1 * h.max() < quantizer.step.max() * (2 ** 8 - 1) < 10 * h.max()
    compression.optimizer(torch.optim.SGD, lr=0.01)
    assert compression.loss(model(batch["input_ids"], batch["attention_mask"]), batch).item() == 0


# --- selection never empties a layer -------------------------------------------------------------------

def _two_layers(scale_first: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].weight.mul_(scale_first)
    return model


def test_global_pruning_that_would_empty_a_layer_is_refused():
    model = _two_layers(1e-3)
    compression = slimkit.prepare(model, {"prune": {"method": "magnitude", "sparsity": 0.7}}, steps_per_epoch=1,
                                  epochs=1)
    with pytest.raises(SlimkitError, match=r"remove every weight of 0\b.*max_layer_sparsity"):
        compression.optimizer(torch.optim.SGD, lr=0.1)


def _capped_reference(scores: dict[str, torch.Tensor], sparsity: float, cap: float) -> dict[str, torch.Tensor]:
    """Written independently: each layer's floor of best entries first, then the best of the rest by value."""
    entries = [(float(v), name, i) for name, s in scores.items() for i, v in enumerate(s.reshape(-1).tolist())]
    keep = {name: set() for name in scores}
    for name, s in scores.items():
        floor = s.numel() - round(cap * s.numel())
        best = sorted(range(s.numel()), key=lambda i: (-float(s.reshape(-1)[i]), i))[:floor]
        keep[name].update(best)
    budget = keep_count(sum(s.numel() for s in scores.values()), sparsity) - sum(len(k) for k in keep.values())
    order = {name: n for n, name in enumerate(scores)}
    for _, name, i in sorted(entries, key=lambda e: (-e[0], order[e[1]], e[2])):
        if budget == 0:
            break
        if i not in keep[name]:
            keep[name].add(i)
            budget -= 1
    return {name: torch.tensor([i in keep[name] for i in range(s.numel())]) for name, s in scores.items()}


@pytest.mark.parametrize("sparsity,cap", [(0.7, 0.9), (0.5, 0.6), (0.8, 0.8)])
def test_a_per_layer_cap_keeps_exact_counts(sparsity, cap):
    g = torch.Generator().manual_seed(1)
    scores = {"a": torch.rand(40, generator=g) * 1e-3, "b": torch.rand(100, generator=g),
              "c": torch.rand(7, generator=g)}
    masks = global_masks(scores, sparsity, max_layer_sparsity=cap)
    assert sum(int(m.sum()) for m in masks.values()) == keep_count(147, sparsity)
    for name, mask in masks.items():
        assert int(mask.sum()) >= scores[name].numel() - round(cap * scores[name].numel())
        assert torch.equal(mask, _capped_reference(scores, sparsity, cap)[name])


def test_a_cap_the_target_cannot_meet_is_refused():
    scores = {"a": torch.rand(10), "b": torch.rand(10)}
    with pytest.raises(SlimkitError, match="cannot be met with max_layer_sparsity"):
        global_masks(scores, 0.9, max_layer_sparsity=0.5)


def test_capped_global_pruning_through_prepare():
    model = _two_layers(1e-3)
    stage = {"prune": {"method": "magnitude", "sparsity": 0.7, "max_layer_sparsity": 0.9}}
    compression = slimkit.prepare(model, stage, steps_per_epoch=1, epochs=1)
    compression.optimizer(torch.optim.SGD, lr=0.1)
    model = compression.finalize()
    assert _zeros(model[0]) == round(0.9 * 128)  # the small layer is capped, not emptied
    assert _zeros(model[0]) + _zeros(model[2]) == round(0.7 * (128 + 256))


# --- the CLI runs a user's model and data by import path ---------------------------------------------------

def test_cli_runs_a_users_model_and_data_by_import_path(tmp_path, capsys):
    recipe = {"name": "cli-own", "model": {"factory": "user_code:regression_model", "kwargs": {"hidden": 16}},
              "data": {"factory": "user_code:regression_data", "kwargs": {"n": 256}, "batch_size": 32},
              "objective": {"loss": "mse"},
              "train": {"epochs": 2, "lr": 0.01, "optimizer": "adam", "weight_decay": 0.0},
              "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5, "scope": "layer"}}],
              "measure": {"batch_sizes": [1], "repeats": 1, "warmup": 1}}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--trust-code"]) == 0
    metrics = slimkit.Report.from_run(tmp_path / "run").metrics
    assert metrics["model"] == "user_code:regression_model" and metrics["data"]["train"] == 179
    assert metrics["objective"]["loss"] == "mse_loss"
    state = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)["model"]
    assert int((state["2.weight"] == 0).sum()) == 128  # 16x16 at 50%
    capsys.readouterr()
    assert main(["info", str(tmp_path / "run")]) == 2  # slimkit cannot rebuild a user's model from a file
    assert "weights.pt holds its state_dict" in capsys.readouterr().err


@pytest.mark.parametrize("key,value,message", [
    ("model", {"factory": "user_code:no_such_builder"}, "model.factory: module 'user_code' has no attribute"),
    ("model", {"factory": "no_such_package.mod:build"}, "model.factory: cannot import module"),
    ("model", {"name": "lenet", "factory": "user_code:regression_model"}, "exactly one of 'name'"),
    ("data", {"factory": "user_code"}, "not an import path of the form"),
    ("objective", {"loss": "hinge"}, "unknown loss"),
])
def test_cli_refuses_bad_import_paths_naming_the_key(tmp_path, capsys, key, value, message):
    recipe = {"model": {"name": "lenet"}, "data": {"name": "digits"}, "train": {"epochs": 1}, key: value}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--trust-code"]) == 2
    err = capsys.readouterr().err
    assert f"'{key}" in err and message in err


def test_metric_functions_are_averaged_over_samples():
    from slimkit.train.objective import make_objective
    from slimkit.train.trainer import evaluate

    x, y = torch.randn(10, 3), torch.randn(10, 1)
    model = nn.Linear(3, 1)
    objective = make_objective(F.mse_loss, lambda out, target: (out - target).abs().mean())
    loss, mae = evaluate(model, TensorDataset(x, y), batch_size=3, objective=objective)
    with torch.no_grad():
        assert loss == pytest.approx(F.mse_loss(model(x), y).item(), rel=1e-6)
        assert mae == pytest.approx((model(x) - y).abs().mean().item(), rel=1e-6)
    assert math.isfinite(loss)


def test_any_module_teaches_on_the_users_batches():
    torch.manual_seed(0)
    teacher, student = user_code.TokenTagger(dim=48), user_code.TokenTagger()
    loader = DataLoader(user_code.token_data()["train"], batch_size=16)
    stage = {"distill": {"method": "hinton", "teacher": teacher, "temperature": 2.0, "weight": 0.5}}
    compression = slimkit.prepare(student, stage, steps_per_epoch=len(loader), epochs=1)
    compression.optimizer(torch.optim.SGD, lr=0.1)
    batch = next(iter(loader))
    outputs = student(batch["input_ids"], batch["attention_mask"])
    with torch.no_grad():  # independently: KL over the tags at each token (labels (N, T) mark the last dim)
        q = torch.softmax(teacher(batch["input_ids"], batch["attention_mask"]).logits / 2.0, -1)
        log_p = torch.log_softmax(outputs.logits / 2.0, -1)
        expected = 0.5 * 2.0**2 * (q * (q.log() - log_p)).sum(-1).mean()
    assert torch.allclose(compression.loss(outputs, batch), expected)
    from slimkit.methods import parse_stage

    assert parse_stage(stage).model_dump(mode="json")["teacher"] == "<in-memory TokenTagger>"  # recipes stay YAML


def test_channel_taylor_scores_come_from_the_users_loss():
    from slimkit.channels import plan_pruning
    from slimkit.train.objective import make_objective

    torch.manual_seed(0)
    model = user_code.SmallCNN()
    x, target = user_code.ColourImages(32, 3).images, torch.randn(32, 3)
    plan = plan_pruning(copy.deepcopy(model), x[:1], ratio=0.5, criterion="taylor", batch=(x, target),
                        objective=make_objective(F.mse_loss), scope="layer")
    reference = copy.deepcopy(model).train()  # independently: |gamma * dMSE/dgamma| of bn1, top half kept
    F.mse_loss(reference(x), target).backward()
    scores = (reference.bn1.weight * reference.bn1.weight.grad).abs().detach()
    assert scores.count_nonzero() == 8
    expected = sorted(torch.sort(scores, descending=True, stable=True).indices[:4].tolist())
    assert plan.modules["conv1"]["out"] == expected
