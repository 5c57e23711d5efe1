import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from slimkit.sparsity.masks import add_mask, get_mask, raw_weight, remove_masks
from slimkit.sparsity.topk import global_masks, keep_count, layerwise_masks, topk_mask


@settings(max_examples=60, deadline=None)
@given(numel=st.integers(1, 500), sparsity=st.floats(0, 0.999), seed=st.integers(0, 10_000),
       ties=st.booleans())
def test_topk_mask_keeps_exact_count(numel, sparsity, seed, ties):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (numel,), generator=g).float() if ties else torch.rand(numel, generator=g)
    keep = keep_count(numel, sparsity)
    mask = topk_mask(scores, keep)
    assert int(mask.sum()) == keep
    if 0 < keep < numel:  # every kept score is >= every dropped score
        assert scores[mask].min() >= scores[~mask].max()


def test_ties_break_toward_lower_index():
    mask = topk_mask(torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5]), 2)
    assert mask.tolist() == [True, True, False, False, False]


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 200), min_size=1, max_size=5), sparsity=st.floats(0, 0.99),
       seed=st.integers(0, 1000))
def test_global_and_layerwise_counts(sizes, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    scores = {f"l{i}": torch.rand(n, generator=g) for i, n in enumerate(sizes)}
    total = sum(sizes)
    kept = sum(int(m.sum()) for m in global_masks(scores, sparsity).values())
    assert kept == keep_count(total, sparsity)
    for name, mask in layerwise_masks(scores, sparsity).items():
        assert int(mask.sum()) == keep_count(scores[name].numel(), sparsity)


def test_keep_count_rejects_out_of_range():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="sparsity"):
            keep_count(10, bad)


def test_global_ranking_spans_layers():
    scores = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([0.9, 0.8, 0.05])}
    masks = global_masks(scores, 0.5)
    assert masks["a"].tolist() == [False, False, True]
    assert masks["b"].tolist() == [True, True, False]


def test_mask_parametrization_reads_masked_weight_and_round_trips():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    mask = add_mask(layer)
    assert add_mask(layer) is mask  # idempotent
    mask.mask.copy_(torch.rand(4, 6) > 0.5)
    assert torch.equal(layer.weight, raw_weight(layer) * mask.mask)

    fresh = nn.Linear(6, 4)
    add_mask(fresh)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(get_mask(fresh).mask, mask.mask)
    assert torch.equal(fresh.weight, layer.weight)


def test_remove_masks_bakes_zeros_into_weight():
    layer = nn.Conv2d(3, 5, 3)
    mask = add_mask(layer)
    mask.mask.view(-1)[::2] = False
    expected = layer.weight.detach().clone()
    remove_masks(layer)
    assert get_mask(layer) is None
    assert isinstance(layer.weight, nn.Parameter)
    assert torch.equal(layer.weight.detach(), expected)
    assert int((layer.weight == 0).sum()) == mask.mask.numel() - int(mask.mask.sum())
