"""The quantize stage's start_epoch: float training (pruning, fine-tuning) first, then quantizers calibrated on
the weights and inputs of that moment; start_epoch == train.epochs quantizes after training (PTQ in one run)."""

import pytest
import torch
from torch import nn

import slimkit
from interrupts import Interrupt, interrupt_after
from slimkit.errors import RecipeError, SlimkitError
from slimkit.layers import canonical_weight
from slimkit.quant import UniformQuantizer
from slimkit.quant.attach import weight_quantization
from slimkit.quant.int8_graph import int8_graph
from slimkit.recipe import Recipe

QUANTIZED = ("features.3", "classifier.1")  # selected layers of the half-width LeNet (first and last: 8-bit too)


def _recipe(quantize: dict, epochs: int = 3) -> Recipe:
    return Recipe.from_dict({
        "name": "phase", "model": {"name": "lenet", "width": 0.5}, "data": {"name": "digits", "batch_size": 64},
        "baseline": None, "train": {"epochs": epochs, "lr": 0.02},
        "stages": [{"prune": {"method": "gmp", "sparsity": 0.8, "scope": "layer", "start_epoch": 0,
                              "end_epoch": 1}},
                   {"quantize": {"method": "uniform", "bits": 8, **quantize}}],
        "measure": {"batch_sizes": [1], "repeats": 2, "warmup": 1}})


def _fresh_step(layer: nn.Module) -> torch.Tensor:
    """An independent calibration of the layer's weight quantizer: a new LSQ quantizer, the same MSE observer,
    on the weight its quantizer sees (the raw weight times any pruning mask)."""
    weight = layer.parametrizations.weight.original.detach()
    mask = getattr(layer.parametrizations.weight[0], "mask", None)
    reference = UniformQuantizer(8, weight.shape[0], signed=True)
    reference.calibrate(weight * mask if mask is not None else weight, "mse")
    return reference.step.detach()


def _float_copy(model: nn.Module) -> nn.Module:
    """The same LeNet without quantization: its weights are the parametrizations' originals."""
    plain = slimkit.models.lenet(1, 10, 8, 0.5)
    state = {k.replace("parametrizations.weight.original", "weight"): v for k, v in model.state_dict().items()
             if "quantizer" not in k and ".parametrizations.weight.0." not in k}
    plain.load_state_dict(state)
    return plain


def _loop(start_epoch: int, epochs: int = 3):
    """A user's own loop under slimkit.prepare; yields (epoch, model, compression) at the start of each epoch."""
    torch.manual_seed(0)
    model = slimkit.models.lenet(1, 10, 8, 0.5)
    data = [(torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))) for _ in range(4)]
    recipe = [{"quantize": {"method": "uniform", "bits": 8, "start_epoch": start_epoch}}]
    compression = slimkit.prepare(model, recipe, steps_per_epoch=len(data), epochs=epochs, data=data)
    optimizer = compression.optimizer(torch.optim.SGD, lr=0.05, momentum=0.9)
    for epoch in range(epochs):
        yield epoch, model, compression
        for x, y in data:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    yield epochs, model, compression


def test_quantizers_wait_in_float_until_start_epoch_then_calibrate_on_that_moment():
    x = torch.randn(8, 1, 8, 8)
    for epoch, model, compression in _loop(start_epoch=2):
        layers = [model.get_submodule(n) for n in QUANTIZED]
        if epoch < 2:  # float: plain layers, so a stage before this one may still reshape them (slice channels)
            assert all(weight_quantization(m) is None and type(m) in (nn.Conv2d, nn.Linear) for m in layers)
            assert not compression.is_complete(epoch)
        elif epoch == 2:  # switched on, calibrated on the weights the float epochs left
            assert compression.is_complete(epoch)
            for module in layers:
                wq = weight_quantization(module)
                assert wq.active
                assert torch.equal(wq.quantizer.step.detach(), _fresh_step(module))
                weight = canonical_weight(module).detach()
                on_grid = weight.reshape(weight.shape[0], -1) / wq.quantizer.step.detach().reshape(-1, 1)
                assert torch.allclose(on_grid, on_grid.round(), atol=1e-3)
            assert torch.equal(model(x), model(x))  # the quantized forward runs
            steps = [p for group in compression._optimizer.param_groups for p in group["params"]
                     if any(p is q.quantizer.step for q in map(weight_quantization, layers))]
            assert len(steps) == len(layers)  # the steps joined the optimizer when the stage started
    assert compression.state_dict()["modifiers"][0] == {"active": True}


def test_post_training_quantization_in_the_same_run(tmp_path):
    """start_epoch == train.epochs: every epoch trains in float and counts; finalize calibrates the kept weights."""
    run = slimkit.run_recipe(_recipe({"start_epoch": 3}), tmp_path, progress=False)
    history = run.metrics["models"]["compressed"]["history"]
    assert [r["complete"] for r in history] == [True, True, True]
    for name in QUANTIZED:
        module = run.model.get_submodule(name)
        assert weight_quantization(module).active
        assert torch.equal(weight_quantization(module).quantizer.step.detach(), _fresh_step(module))
    weights = run.model.get_submodule("features.3").weight
    assert int((weights == 0).sum()) == round(0.8 * weights.numel())  # the pruned zeros stay zero on the grid
    reloaded = slimkit.load(tmp_path / "model.pt")
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(reloaded(x), run.model.eval()(x))


@pytest.mark.slow
def test_prune_finetune_quantize_resumes_bit_identical(tmp_path):
    """Killed in the float fine-tuning, before quantization starts: the resumed run calibrates at the same
    moment on the same batches and ends with the same weights and steps."""
    recipe = _recipe({"start_epoch": 2}, epochs=3)
    full = slimkit.run_recipe(recipe, tmp_path / "full", progress=False)
    assert [r["complete"] for r in full.metrics["models"]["compressed"]["history"]] == [False, False, True]
    with pytest.raises(Interrupt):
        slimkit.run_recipe(recipe, tmp_path / "killed", progress=False, callbacks=(interrupt_after(2),))
    resumed = slimkit.run_recipe(recipe, tmp_path / "killed", resume=True, progress=False)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_quantize_stage_errors():
    with pytest.raises(RecipeError, match=r"stages\[1\]\.quantize\.end_epoch.*2: quantization stays on"):
        _recipe({"start_epoch": 1, "end_epoch": 2})
    with pytest.raises(RecipeError, match=r"stages\[1\]\.quantize\.start_epoch': 4 is beyond train\.epochs \(3\)"):
        _recipe({"start_epoch": 4})
    for epoch, model, _ in _loop(start_epoch=1, epochs=1):
        if epoch == 0:  # a model whose quantizers are not on yet is not an int8 model
            with pytest.raises(SlimkitError, match=r"no quantized layer"):
                int8_graph(model.eval(), (1, 8, 8))
            model.train()
