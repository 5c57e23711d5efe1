"""Wanda against scores computed by hand, and its exact counts in every layout."""

import math

import pytest
import torch
from torch import nn

import slimkit
from slimkit.sparsity.blocks import is_block_sparse
from slimkit.sparsity.nm import is_nm
from slimkit.sparsity.oneshot import Layout
from slimkit.sparsity.wanda import layout_mask

# Calibration inputs (3 tokens x 4 features), their column norms ||X_j||: 5, 1, sqrt(5), 2
X = torch.tensor([[3.0, 0.0, 1.0, 0.0], [4.0, 1.0, 0.0, 2.0], [0.0, 0.0, 2.0, 0.0]])
W = torch.tensor([[0.1, -0.2, 0.3, 0.05], [4.0, 3.0, -2.0, 2.0]])
# scores |W| * ||X_j||, by hand:
#   row 0: 0.5, 0.2, 0.3 sqrt(5) = 0.671, 0.1  -> keeps features 0 and 2 (by |w| alone it would keep 1 and 2)
#   row 1: 20,  3,   2 sqrt(5) = 4.472,   4    -> keeps features 0 and 2 (by |w| alone: 0 and 1)
# one ranking over the layer would keep row 1's 20, 4.472, 4 and 3 and empty row 0: rows are compared alone
EXPECTED = torch.tensor([[True, False, True, False], [True, False, True, False]])


def _wanda(model: nn.Module, batches: list, **stage) -> nn.Module:
    stage = {"method": "wanda", "layers": {"skip_last_linear": False, "skip_first_conv": False}, **stage}
    return slimkit.one_shot(model, {"prune": stage}, batches)


def test_wanda_mask_equals_the_hand_computed_scores():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(W)
    pruned = _wanda(nn.Sequential(layer), [(X[:2],), (X[2:],)], sparsity=0.5, calibration_batches=2)
    assert torch.equal(pruned[0].weight != 0, EXPECTED)
    assert torch.equal(pruned[0].weight[EXPECTED], W[EXPECTED])  # Wanda changes no kept weight


def test_wanda_scores_a_conv_by_its_receptive_fields():
    """One input channel, 2x2 kernel, stride 2: the receptive fields are the four disjoint 2x2 tiles, so the
    norm of kernel tap (i, j) is the norm of the pixels at (i, j) of every tile, computed here by hand."""
    image = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 4.0], [2.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    # tap norms: (0,0): sqrt(1+4+4+0) = 3, (0,1): 0, (1,0): 0, (1,1): sqrt(9+16) = 5
    conv = nn.Conv2d(1, 1, 2, stride=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 9.0], [8.0, 0.7]]]]))  # scores 3, 0, 0, 3.5
    pruned = _wanda(nn.Sequential(conv), [(image.view(1, 1, 4, 4),)], sparsity=0.5)
    assert torch.equal(pruned[0].weight.view(-1) != 0, torch.tensor([True, False, False, True]))


def _scores(*shape: int) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(*shape)


@pytest.mark.parametrize("shape", [(8, 16), (5, 6, 3, 3), (7, 30)])
def test_unstructured_rows_lose_their_share_and_the_layer_exactly_its_count(shape):
    scores = _scores(*shape)
    for sparsity in (0.3, 0.5, 0.77):
        kept = layout_mask(scores, Layout(sparsity))
        pruned_rows = (~kept).reshape(shape[0], -1).sum(1)
        per_row = math.prod(shape[1:])
        assert int(pruned_rows.sum()) == round(sparsity * scores.numel())
        assert all(abs(int(p) - sparsity * per_row) < 1 for p in pruned_rows)
        # and each row keeps its best scores
        for row, keep in zip(scores.reshape(shape[0], -1), kept.reshape(shape[0], -1), strict=True):
            assert row[keep].min() >= row[~keep].max()


@pytest.mark.parametrize("shape", [(8, 16), (5, 6, 3, 3)])
def test_nm_keeps_n_of_every_m_input_channels(shape):
    kept = layout_mask(_scores(*shape), Layout(0.5, (2, 4)))
    assert is_nm(kept.float(), 2, 4)
    inputs, positions = shape[1], math.prod(shape[2:])
    groups = [min(4, inputs - g) for g in range(0, inputs, 4)]  # 6 inputs: a group of 4, then one of 2
    assert int((~kept).sum()) == shape[0] * positions * sum(size - min(2, size) for size in groups)


@pytest.mark.parametrize("shape", [(8, 16), (5, 6, 3, 3)])
def test_blocks_of_four_input_channels_go_whole_and_rows_stay_within_a_block_of_their_share(shape):
    scores = _scores(*shape)
    kept = layout_mask(scores, Layout(0.5, None, 4))
    assert is_block_sparse(kept.float(), 4)
    per_row = math.prod(shape[1:])
    pruned_rows = (~kept).reshape(shape[0], -1).sum(1)
    shares = torch.diff(torch.round(torch.arange(shape[0] + 1) * per_row * 0.5))  # cumulative rounding
    assert all(0 <= share - p < 4 for p, share in zip(pruned_rows.tolist(), shares.tolist(), strict=True))
    if shape == (8, 16):  # whole blocks fit the share exactly: 8 of 16 per row, two blocks
        assert pruned_rows.tolist() == [8] * 8
