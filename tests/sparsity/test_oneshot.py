"""Wanda and SparseGPT as recipe stages: their configs, when they prune, what they leave alone, and a run."""

import pytest
import torch
from torch import nn

import slimkit
from slimkit.errors import RecipeError, SlimkitError, UnsupportedLayerError
from slimkit.methods import parse_stage
from slimkit.quant.attach import weight_quantization
from slimkit.quant.quantizers import UniformQuantizer
from slimkit.sparsity.masks import add_mask, masked_layers, raw_weight

STAGES = [{"method": "wanda", "sparsity": 0.5}, {"method": "sparsegpt", "sparsity": 0.5},
          {"method": "wanda", "n": 2, "m": 4}, {"method": "sparsegpt", "sparsity": 0.5, "block": 4}]
IDS = ["wanda", "sparsegpt", "wanda-2:4", "sparsegpt-block4"]


@pytest.mark.parametrize(("body", "message"), [
    ({"sparsity": 0.5, "n": 2, "m": 4}, "not both"),
    ({}, "not neither"),
    ({"n": 2}, "needs both n and m"),
    ({"n": 4, "m": 4}, "n must be below m"),
    ({"n": 2, "m": 4, "block": 4}, "only block 1 is allowed with n and m"),
    ({"sparsity": 0.5, "end_epoch": 2}, "prunes once, at start_epoch; remove end_epoch"),
    ({"sparsity": 0.5, "block": 3}, "block must be one of"),
    ({"sparsity": 0.5, "lazy_columns": 0}, "lazy_columns"),
])
def test_a_layout_is_given_one_way_and_mistakes_are_named(body, message):
    with pytest.raises(RecipeError, match=message):
        parse_stage({"prune": {"method": "sparsegpt", **body}})


def _mlp(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16),
                         nn.ReLU(), nn.Linear(16, 3)).to(dtype)


def _batches(dtype: torch.dtype = torch.float32, count: int = 4) -> list:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 8, generator=g).to(dtype), torch.randint(0, 3, (16,), generator=g))
            for _ in range(count)]


@pytest.mark.parametrize("stage", STAGES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_one_shot_keeps_dtypes_and_leaves_gradients_alone(stage, dtype):
    model = _mlp(dtype)
    grads = {}
    for name, p in model.named_parameters():
        if name.startswith("2."):  # a pruned layer with gradients from the user's loop; others have none
            p.grad = torch.full_like(p, 0.25)
            grads[name] = p.grad
    before = {name: p.dtype for name, p in model.named_parameters()}
    pruned = slimkit.one_shot(model, {"prune": stage}, _batches(dtype))
    assert {name: p.dtype for name, p in pruned.named_parameters()} == before
    for name, p in pruned.named_parameters():
        if name in grads:
            assert p.grad is grads[name] and bool((p.grad == 0.25).all())
        else:
            assert p.grad is None
    assert not masked_layers(pruned) and not pruned.training  # finished: masks baked in, eval mode
    for index in (2, 4):  # the selected layers: all linears but the first and the last
        weight = pruned[index].weight
        zeros = int((weight == 0).sum())
        assert round(0.5 * weight.numel()) - zeros in (range(4) if stage.get("block") else (0,))


def test_sparsegpt_improves_on_wanda_and_magnitude_at_the_model_output():
    """The calibration batches' outputs: SparseGPT updates the kept weights to compensate, so it reconstructs
    the dense outputs better than both criteria that only choose masks, on the same layers at 60%."""
    dense = _mlp()
    batches = _batches(count=8)
    x = torch.cat([b[0] for b in batches])
    reference = dense(x).detach()
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = _mlp()
        stage = {"method": method, "sparsity": 0.6, **({"scope": "layer"} if method == "magnitude" else {})}
        pruned = slimkit.one_shot(model, {"prune": stage}, batches, loss_fn=nn.functional.cross_entropy)
        errors[method] = float((pruned(x).detach() - reference).pow(2).sum())
    assert errors["sparsegpt"] < errors["wanda"] and errors["sparsegpt"] < errors["magnitude"]


def test_a_stage_at_epoch_zero_prunes_before_a_later_stage_calibrates():
    """Stages act in the recipe's order: wanda at attach, then PTQ calibrates the quantizers on pruned weights."""
    stages = [{"prune": {"method": "wanda", "sparsity": 0.7}}, {"quantize": {"method": "uniform", "bits": 8}}]
    model = slimkit.one_shot(_mlp(), stages, _batches())
    pruned = raw_weight(model[2])  # the mask baked in, under the quantizer
    assert int((pruned == 0).sum()) == round(0.7 * pruned.numel())
    steps = {}
    for name, weight in (("pruned", pruned), ("dense", _mlp()[2].weight)):
        reference = UniformQuantizer(8, 32, signed=True)
        reference.calibrate(weight.detach(), "mse")
        steps[name] = reference.step.detach()
    quantizer = weight_quantization(model[2]).quantizer
    assert torch.equal(quantizer.step.detach(), steps["pruned"]) and not torch.equal(steps["pruned"], steps["dense"])


def _train(model: nn.Module, compression, epochs: int = 1) -> None:
    optimizer = compression.optimizer(torch.optim.SGD, lr=0.1)
    for _ in range(epochs):
        for x, y in _batches():
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()


def test_pruned_at_attach_kept_through_training_and_restored_without_data():
    stage = {"prune": {"method": "sparsegpt", "sparsity": 0.5}}
    model = _mlp()
    compression = slimkit.prepare(model, stage, steps_per_epoch=4, epochs=2, data=_batches(),
                                  loss_fn=nn.functional.cross_entropy)
    masks = {name: mask.mask.clone() for name, (_, mask) in masked_layers(model).items()}
    assert all(int((~m).sum()) == round(0.5 * m.numel()) for m in masks.values())  # before any step
    _train(model, compression)
    state, weights = compression.state_dict(), {k: v.clone() for k, v in model.state_dict().items()}

    again = _mlp()  # resumed: the state says it pruned, so nothing is measured and no data is needed
    restored = slimkit.prepare(again, stage, steps_per_epoch=4, epochs=2, state=state)
    again.load_state_dict(weights)
    assert restored.summaries()[0]["calibration"] == {"batches": 4, "groups": 3}  # layers 0, 2 and 4
    assert all(torch.equal(mask.mask, masks[name]) for name, (_, mask) in masked_layers(again).items())
    finished = restored.finalize()
    assert torch.equal(finished[2].weight, weights["2.parametrizations.weight.original"] * masks["2"])


def test_a_stage_at_the_last_epoch_prunes_the_trained_weights():
    """start_epoch = epochs: the epoch that starts after the last step, so the trained weights are pruned."""
    stage = {"prune": {"method": "wanda", "sparsity": 0.5, "start_epoch": 1}}
    model = _mlp()
    compression = slimkit.prepare(model, stage, steps_per_epoch=4, epochs=1, data=_batches(),
                                  loss_fn=nn.functional.cross_entropy)
    optimizer = compression.optimizer(torch.optim.SGD, lr=0.1)
    for x, y in _batches():
        assert all(bool(mask.mask.all()) for _, mask in masked_layers(model).values())  # not while training
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    trained = raw_weight(model[2]).detach().clone()
    finished = compression.finalize()
    kept = finished[2].weight != 0
    assert compression.step_count == 4 and int((~kept).sum()) == 512
    assert torch.equal(finished[2].weight[kept], trained[kept])


def test_without_data_the_error_says_what_to_pass():
    with pytest.raises(SlimkitError, match=r"prune:wanda calibration \(calibration_batches: 8\) needs training "
                                           r"batches; pass data="):
        slimkit.prepare(_mlp(), {"prune": {"method": "wanda", "sparsity": 0.5}}, steps_per_epoch=1, epochs=1)


def test_a_grouped_conv_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=4), nn.Conv2d(8, 4, 3))
    with pytest.raises(UnsupportedLayerError, match=r"'layers': 1: a grouped Conv2d \(groups=4\).*layers.exclude"):
        slimkit.one_shot(model, {"prune": {"method": "wanda", "sparsity": 0.5}}, [(torch.randn(2, 3, 9, 9),)])
    stage = {"prune": {"method": "wanda", "sparsity": 0.5, "layers": {"exclude": ["1"]}}}
    pruned = slimkit.one_shot(model, stage, [(torch.randn(2, 3, 9, 9),)])
    assert int((pruned[2].weight == 0).sum()) == round(0.5 * pruned[2].weight.numel())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["wanda-50", "sparsegpt-2-4", "sparsegpt-int8"])
def test_bundled_one_shot_recipes_run_on_digits(tmp_path, name):
    recipe = slimkit.Recipe.load(name, overrides=("data.name=digits", "baseline.epochs=3", "data.batch_size=64"))
    run = slimkit.run_recipe(recipe, tmp_path / "run", progress=False)
    stage = run.metrics["stages"][0]
    assert stage["calibration"]["batches"] == recipe.stages[0].calibration_batches
    assert stage["achieved_sparsity"] == pytest.approx(stage["target_sparsity"], abs=0.01)
    assert run.metrics["models"]["compressed"]["test_acc"] > 0.5


def test_calibration_inputs_with_nan_are_named():
    batches = _batches()
    batches[1][0][3, 2] = float("nan")
    with pytest.raises(SlimkitError, match="the calibration inputs of 0 hold NaN or Inf"):
        slimkit.one_shot(_mlp(), {"prune": {"method": "wanda", "sparsity": 0.5}}, batches)


def test_a_hessian_that_cannot_be_factored_is_named_with_its_layer(monkeypatch):
    def fail(*args, **kwargs):
        raise torch.linalg.LinAlgError("not positive-definite")

    monkeypatch.setattr(torch.linalg, "cholesky", fail)
    with pytest.raises(SlimkitError, match=r"prune:sparsegpt on 0: the inputs' Hessian is not positive definite .* "
                                           r"raise dampening"):
        slimkit.one_shot(_mlp(), {"prune": {"method": "sparsegpt", "sparsity": 0.5}}, _batches())


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_what_an_earlier_mask_pruned_stays_pruned(method):
    """A mask already on a layer with 80% zeros, then a one-shot stage at 50%: the masked weights score 0 and go
    first, and where the mask went further they are never brought back (their raw values are still there)."""
    model = _mlp()
    mask = add_mask(model[2])
    with torch.no_grad():
        mask.mask.copy_(torch.rand(mask.mask.shape, generator=torch.Generator().manual_seed(3)) > 0.8)
    earlier = mask.mask.clone()
    pruned = slimkit.one_shot(model, {"prune": {"method": method, "sparsity": 0.5}}, _batches())
    assert not bool((pruned[2].weight != 0)[~earlier].any())
    assert int((pruned[0].weight == 0).sum()) == round(0.5 * pruned[0].weight.numel())  # an unmasked layer
