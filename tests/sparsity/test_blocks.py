"""Block-sparse masks (`block` on the mask pruners): blocks of consecutive input channels kept or dropped
together, exact weight counts, and agreement with a brute-force reference written separately here."""

import math

import pytest
import torch
from torch import nn

from slimkit.data import load_data
from slimkit.errors import RecipeError, SlimkitError
from slimkit.layers import LayerAdapter, LayerSelection, register_layer
from slimkit.models import lenet
from slimkit.recipe import DataConfig, Recipe, TrainConfig
from slimkit.sparsity import (
    GradualMagnitudeConfig,
    GradualMagnitudeModifier,
    MagnitudeConfig,
    MagnitudeModifier,
    MovementConfig,
    MovementModifier,
    masked_layers,
)
from slimkit.sparsity.blocks import is_block_sparse
from slimkit.sparsity.structure import detect_structure
from slimkit.sparsity.topk import keep_count
from slimkit.train import TrainContext, Trainer

EVERY_LAYER = LayerSelection(skip_first_conv=False, skip_last_linear=False)


def _net() -> nn.Sequential:
    """Inputs 8 (full blocks of 4), 10 (a partial block of 2 per row), 3 (one partial block) and 37."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(8, 12, 3), nn.Conv2d(10, 6, 3), nn.Conv2d(3, 5, 1), nn.Linear(37, 9))


def _pruned(config, model: nn.Module | None = None):
    model = model if model is not None else _net()
    pruner = type_of(config)(config)
    pruner.attach(model, TrainContext(model, epochs=1, steps_per_epoch=1))
    pruner.prune_to(config.sparsity)
    return model, {name: mask.mask.clone() for name, (_, mask) in pruner.masks.items()}, pruner


def type_of(config):
    return {MagnitudeConfig: MagnitudeModifier, GradualMagnitudeConfig: GradualMagnitudeModifier,
            MovementConfig: MovementModifier}[type(config)]


def reference_blocks(weights: dict[str, torch.Tensor], block: int) -> list[tuple[float, int, str, int, int, tuple]]:
    """Every block as (ranking score, size, layer, out, first input, kernel position), by explicit loops:
    the L1 norm of its weights, scaled by block/size for a partial block."""
    found = []
    for name, w in weights.items():
        w = w.detach().double()
        positions = [()] if w.dim() == 2 else [(y, x) for y in range(w.shape[2]) for x in range(w.shape[3])]
        for o in range(w.shape[0]):
            for start in range(0, w.shape[1], block):
                members = range(start, min(start + block, w.shape[1]))
                for pos in positions:
                    l1 = sum(abs(float(w[(o, i, *pos)])) for i in members)
                    found.append((l1 * block / len(members), len(members), name, o, start, pos))
    return found


def reference_masks(weights: dict[str, torch.Tensor], block: int, sparsity: float, scope: str) -> dict:
    """Keep whole blocks from the largest score down until keep_count weights are kept, per layer or over all."""
    groups = [[b for b in reference_blocks(weights, block) if b[2] == name] for name in weights] \
        if scope == "layer" else [reference_blocks(weights, block)]
    masks = {name: torch.zeros(w.shape, dtype=torch.bool) for name, w in weights.items()}
    for blocks in groups:
        keep = keep_count(sum(b[1] for b in blocks), sparsity)
        kept = 0
        for _, size, name, o, start, pos in sorted(blocks, key=lambda b: -b[0]):
            if kept >= keep:
                break
            for i in range(start, start + size):
                masks[name][(o, i, *pos)] = True
            kept += size
    return masks


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("block", [2, 4, 8])
def test_kept_blocks_match_a_brute_force_l1_reference(scope, block):
    weights = {str(i): layer.weight.detach().clone() for i, layer in enumerate(_net())}  # _net() is seeded
    _, masks, _ = _pruned(MagnitudeConfig(sparsity=0.7, scope=scope, block=block, layers=EVERY_LAYER))
    expected = reference_masks(weights, block, 0.7, scope)
    for name in masks:
        assert torch.equal(masks[name], expected[name]), name


@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.9, 0.95])
def test_layer_scope_counts_are_exact_up_to_the_block_that_reaches_them(sparsity):
    _, masks, pruner = _pruned(MagnitudeConfig(sparsity=sparsity, scope="layer", block=4, layers=EVERY_LAYER))
    for name, mask in masks.items():
        keep = keep_count(mask.numel(), sparsity)
        kept = int(mask.sum())
        assert keep <= kept < keep + 4, name
        assert is_block_sparse(mask.float(), 4), name
    conv = masks["0"]  # 8 inputs: only full blocks, so the kept count is keep rounded up to a multiple of 4
    assert int(conv.sum()) == 4 * math.ceil(keep_count(conv.numel(), sparsity) / 4)
    total = sum(m.numel() for m in masks.values())
    assert pruner.achieved_sparsity() == 1 - sum(int(m.sum()) for m in masks.values()) / total


def test_exact_count_when_it_falls_on_a_block_boundary():
    linear = nn.Sequential(nn.Linear(40, 10))  # 400 weights in 100 blocks of 4; 90% is 90 blocks exactly
    _, masks, pruner = _pruned(MagnitudeConfig(sparsity=0.9, block=4, layers=EVERY_LAYER), linear)
    assert int(masks["0"].sum()) == keep_count(400, 0.9) == 40
    assert pruner.achieved_sparsity() == 0.9


def test_partial_last_block_is_kept_or_dropped_whole():
    _, masks, _ = _pruned(MagnitudeConfig(sparsity=0.6, scope="layer", block=4, layers=EVERY_LAYER))
    last = masks["1"][:, 8:10]  # inputs 8 and 9 form the partial block of every row of the 10-input conv
    assert torch.equal(last[:, 0], last[:, 1])
    assert 0 < int(last[:, 0].sum()) < last[:, 0].numel()  # some partial blocks survive, some go
    three = masks["2"]  # 3 inputs, block 4: each (out, position) keeps all 3 inputs or none
    assert bool((three.all(1) | ~three.any(1)).all())
    linear = masks["3"]  # 37 inputs: 9 full blocks and a partial block of 1
    assert is_block_sparse(linear[:, :36].float(), 4)


def test_global_scope_ranks_all_layers_together_with_an_exact_total():
    _, masks, _ = _pruned(MagnitudeConfig(sparsity=0.7, block=4, layers=EVERY_LAYER))
    total, kept = sum(m.numel() for m in masks.values()), sum(int(m.sum()) for m in masks.values())
    assert keep_count(total, 0.7) <= kept < keep_count(total, 0.7) + 4
    shares = {name: 1 - int(m.sum()) / m.numel() for name, m in masks.items()}
    assert max(shares.values()) - min(shares.values()) > 0.05  # not the same share per layer
    assert all(is_block_sparse(m.float(), 4) for m in masks.values())


def test_max_layer_sparsity_caps_every_layer_and_empty_layers_are_refused():
    model = _net()
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # the smallest weights of all: global pruning at 95% would take every one
    with pytest.raises(SlimkitError, match=r"would remove every weight of (.*, )?2\b"):
        _pruned(MagnitudeConfig(sparsity=0.95, block=4, layers=EVERY_LAYER), model)
    _, masks, _ = _pruned(MagnitudeConfig(sparsity=0.9, block=4, layers=EVERY_LAYER, max_layer_sparsity=0.95),
                          model)
    for name, mask in masks.items():
        assert 1 - int(mask.sum()) / mask.numel() <= 0.95, name
        assert is_block_sparse(mask.float(), 4), name
    total = sum(m.numel() for m in masks.values())
    assert 1 - sum(int(m.sum()) for m in masks.values()) / total <= 0.9


def test_block_one_is_the_unstructured_ranking():
    _, plain, _ = _pruned(MagnitudeConfig(sparsity=0.8, layers=EVERY_LAYER))
    _, one, _ = _pruned(MagnitudeConfig(sparsity=0.8, block=1, layers=EVERY_LAYER))
    assert all(torch.equal(plain[n], one[n]) for n in plain)
    assert sum(m.numel() - int(m.sum()) for m in one.values()) == round(0.8 * sum(m.numel() for m in one.values()))


def test_gmp_reaches_its_target_in_blocks_through_the_schedule():
    model = _net()
    pruner = GradualMagnitudeModifier(GradualMagnitudeConfig(sparsity=0.9, block=4, scope="layer", start_epoch=1,
                                                             end_epoch=4, updates_per_epoch=2, layers=EVERY_LAYER))
    ctx = TrainContext(model, epochs=5, steps_per_epoch=10)
    pruner.attach(model, ctx)
    previous = {n: torch.ones_like(mask.mask) for n, (_, mask) in pruner.masks.items()}
    targets = []
    for epoch in range(5):
        pruner.on_epoch_start(epoch, ctx)
        for step in range(epoch * 10 + 1, epoch * 10 + 11):
            with torch.no_grad():  # weights move between updates, as in training
                for module, _ in pruner.masks.values():
                    module.parametrizations.weight.original.add_(0.01 * torch.randn_like(module.weight))
            pruner.on_step_end(step, ctx)
            for name, (_, mask) in pruner.masks.items():
                assert not bool((mask.mask & ~previous[name]).any())  # a dropped block never returns
                assert is_block_sparse(mask.mask.float(), 4)
                previous[name] = mask.mask.clone()
            targets.append(pruner.current)
    assert targets[9] == 0.0 and len(set(targets)) == 1 + 6 and targets[-1] == 0.9
    for _, mask in pruner.masks.values():
        keep = keep_count(mask.mask.numel(), 0.9)
        assert keep <= int(mask.mask.sum()) < keep + 4
    pruner.finalize(model)
    assert masked_layers(model) == {}
    assert all(is_block_sparse(layer.weight, 4) for layer in model)


def test_learned_scores_rank_blocks_and_break_ties_by_block_magnitude():
    """Movement's scores start at 0: every block ties, so the block's |w| sum decides, as magnitude would."""
    _, by_movement, _ = _pruned(MovementConfig(sparsity=0.75, block=4, layers=EVERY_LAYER))
    _, by_magnitude, _ = _pruned(MagnitudeConfig(sparsity=0.75, block=4, scope="layer", layers=EVERY_LAYER))
    assert all(torch.equal(by_movement[n], by_magnitude[n]) for n in by_movement)


class StoredTransposed(nn.Module):
    """A linear map whose weight is stored (in, out), as HF's Conv1D stores it."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(inputs, outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def test_blocks_run_along_inputs_whatever_the_storage():
    register_layer(StoredTransposed, LayerAdapter("linear", transposed=True, linear_map=True))
    torch.manual_seed(0)
    model = nn.Sequential(StoredTransposed(12, 7))
    _, masks, _ = _pruned(MagnitudeConfig(sparsity=0.5, block=4, layers=EVERY_LAYER), model)
    canonical = masks["0"].t()  # (out, in)
    assert is_block_sparse(canonical.float(), 4) and not is_block_sparse(masks["0"].float(), 4)
    assert int(canonical.sum()) == keep_count(84, 0.5) + 2  # 42 rounded up to whole blocks of 4


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(name="digits"))


def test_trained_block_pruning_leaves_a_block_sparse_model(digits):
    torch.manual_seed(0)
    model = lenet(in_channels=1, input_size=8, width=0.5)
    config = GradualMagnitudeConfig(sparsity=0.8, block=4, scope="layer", start_epoch=0, end_epoch=1)
    result = Trainer(model, digits, TrainConfig(epochs=2, lr=0.05), [GradualMagnitudeModifier(config)], batch_size=64,
                     progress=False).fit()
    for layer in (result.model.features[3], result.model.classifier[1]):
        assert is_block_sparse(layer.weight, 4)
        assert detect_structure(layer.weight) == {"structure": "blocks", "block": 4}
        keep = keep_count(layer.weight.numel(), 0.8)
        assert keep <= int((layer.weight != 0).sum()) < keep + 4


@pytest.mark.parametrize("bad", [0, 3, 32])
def test_bad_block_is_refused_with_key_value_and_allowed(digits_recipe, bad):
    digits_recipe["stages"][0]["prune"]["block"] = bad
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(digits_recipe)
    message = str(info.value)
    assert f"'stages[0].prune.block': invalid value {bad}" in message and "1, 2, 4, 8, 16" in message


def test_a_method_that_picks_its_own_groups_refuses_blocks(digits_recipe):
    digits_recipe["stages"][0]["prune"] = {"method": "sense", "sparsity": 0.5, "block": 4}
    with pytest.raises(RecipeError, match="'block': sense chooses weights in its own groups, so only block 1"):
        Recipe.from_dict(digits_recipe)


def test_detect_structure_names_the_largest_uniform_block():
    torch.manual_seed(0)
    weight = torch.randn(16, 32, 3, 3)
    keep8 = torch.rand(16, 4, 3, 3) < 0.3
    assert detect_structure(weight * keep8.repeat_interleave(8, 1)) == {"structure": "blocks", "block": 8}
    keep4 = torch.rand(16, 8, 3, 3) < 0.3
    assert detect_structure(weight * keep4.repeat_interleave(4, 1)) == {"structure": "blocks", "block": 4}
    linear = torch.randn(20, 10) * (torch.rand(20, 3) < 0.5).repeat_interleave(4, 1)[:, :10]  # partial block of 2
    assert detect_structure(linear) == {"structure": "blocks", "block": 4}
    unstructured = weight * (torch.rand(weight.shape) < 0.3)
    assert detect_structure(unstructured) == {"structure": "unstructured"}
    one_zero = weight * keep4.repeat_interleave(4, 1)
    first_kept = next(iter(torch.nonzero(one_zero)))
    one_zero[tuple(first_kept)] = 0.0  # a zero inside a kept block breaks the claim
    assert detect_structure(one_zero) == {"structure": "unstructured"}


def test_nm_is_reported_before_blocks():
    weight = torch.randn(8, 16)
    pairs = torch.tensor([True, False]).repeat(8)  # channels 0-1 kept, 2-3 dropped, ...: 2:4 and block 2 at once
    assert detect_structure(weight * pairs.repeat_interleave(2)[:16]) == {"structure": "2:4", "n": 2, "m": 4}


def test_bundled_sparse_int8_recipe_prunes_in_blocks_then_quantizes():
    recipe = Recipe.load("sparse-int8")
    prune, quantize = recipe.stages
    assert (prune.kind, prune.method, prune.block, prune.sparsity) == ("prune", "gmp", 4, 0.9)
    assert (quantize.kind, quantize.method, quantize.bits) == ("quantize", "uniform", 8)
    assert prune.end_epoch < recipe.train.epochs  # fine-tuning epochs after the target is reached
