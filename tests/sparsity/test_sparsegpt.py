"""SparseGPT against dense least-squares solves (numpy's lstsq, no Cholesky or OBS algebra), and its counts.

The layer's error for one output row w is ||A (w - u)||² with A = [sqrt(2/N) X; sqrt(λ) I], i.e.
(w - u)ᵀ (2XᵀX/N + λI) (w - u), the quadratic SparseGPT minimises. Its sweep fixes the columns in order, and
when it fixes column c (to 0 if pruned, else as it stands) the columns after c take the optimal update; so
every weight it keeps ends at the least-squares optimum over the columns from it on, given the columns before
it as they ended. When every pruned column of a row comes before its kept ones, that is the least-squares
optimum of the whole row for its mask.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

import slimkit
from slimkit.sparsity.blocks import is_block_sparse
from slimkit.sparsity.nm import is_nm
from slimkit.sparsity.oneshot import Layout
from slimkit.sparsity.sparsegpt import sparsegpt

ROWS, COLUMNS, TOKENS, DAMPENING = 5, 12, 40, 0.01


def _layer(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, inputs) in float64; correlated inputs, so compensation matters."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(TOKENS, COLUMNS, generator=g, dtype=torch.float64) @ torch.randn(
        COLUMNS, COLUMNS, generator=g, dtype=torch.float64)
    return torch.randn(ROWS, COLUMNS, generator=g, dtype=torch.float64), x


def _hessian(x: torch.Tensor) -> torch.Tensor:
    return 2 * x.t() @ x / x.shape[0]


def _system(x: torch.Tensor) -> np.ndarray:
    """A with AᵀA = 2XᵀX/N + λI, λ the dampening share of the mean diagonal of 2XᵀX/N."""
    h = _hessian(x).numpy()
    damp = DAMPENING * np.mean(np.diag(h))
    return np.vstack([np.sqrt(2 / x.shape[0]) * x.numpy(), np.sqrt(damp) * np.eye(x.shape[1])])


def _least_squares(a: np.ndarray, w: np.ndarray, fixed: dict[int, float], free: list[int]) -> np.ndarray:
    """argmin over the `free` entries of ||A (w - u)||², the other entries of u fixed."""
    target = a @ w - sum(a[:, c] * value for c, value in fixed.items())
    return np.linalg.lstsq(a[:, free], target, rcond=None)[0]


def _error(x: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> float:
    return float(((x @ (w - u).t()) ** 2).sum())


@pytest.mark.parametrize("lazy_columns", [128, 5])
def test_each_kept_weight_is_the_least_squares_optimum_of_the_columns_from_it_on(lazy_columns):
    weight, x = _layer()
    keep = torch.rand(ROWS, COLUMNS, generator=torch.Generator().manual_seed(1)) > 0.5
    pruned, kept = sparsegpt(weight, _hessian(x), Layout(0.5), inputs=COLUMNS, dampening=DAMPENING,
                             lazy_columns=lazy_columns, keep=keep)
    assert torch.equal(kept, keep) and torch.all(pruned[~keep] == 0)
    a = _system(x)
    for r in range(ROWS):
        w, result = weight[r].numpy(), pruned[r].numpy()
        for c in range(COLUMNS):
            if keep[r, c]:
                best = _least_squares(a, w, {j: result[j] for j in range(c)}, list(range(c, COLUMNS)))
                assert result[c] == pytest.approx(best[0], rel=1e-9, abs=1e-9), (r, c)


def test_with_pruned_columns_first_the_row_is_the_least_squares_optimum_for_its_mask():
    weight, x = _layer()
    first_kept = torch.tensor([3, 6, 9, 4, 7])  # row r prunes columns 0 .. first_kept[r] - 1
    keep = torch.arange(COLUMNS).expand(ROWS, COLUMNS) >= first_kept[:, None]
    pruned, _ = sparsegpt(weight, _hessian(x), Layout(0.5), inputs=COLUMNS, dampening=DAMPENING, keep=keep)
    a = _system(x)
    for r in range(ROWS):
        kept_columns = list(range(int(first_kept[r]), COLUMNS))
        best = _least_squares(a, weight[r].numpy(), {c: 0.0 for c in range(int(first_kept[r]))}, kept_columns)
        assert np.allclose(pruned[r, kept_columns].numpy(), best, rtol=1e-9, atol=1e-9)


def _activations(seed: int, outliers: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight 16 x 64, inputs 256 x 64): iid features, or features of log-normal scales (the outlier features
    of transformer activations, where weighing by the inputs matters most)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 64, generator=g, dtype=torch.float64)
    if outliers:
        x = x * torch.exp(torch.randn(64, generator=g, dtype=torch.float64))
    return torch.randn(16, 64, generator=g, dtype=torch.float64), x


@pytest.mark.parametrize("layout", [Layout(0.5), Layout(0.75), Layout(0.5, (2, 4)), Layout(0.5, None, 4),
                                    Layout(0.9, None, 4)], ids=str)
@pytest.mark.parametrize("outliers", [False, True])
def test_the_reconstruction_error_is_at_most_magnitude_pruning_and_at_least_the_optimum_for_its_mask(layout,
                                                                                                    outliers):
    for seed in range(4):
        weight, x = _activations(seed, outliers)
        pruned, kept = sparsegpt(weight, _hessian(x), layout, inputs=64, dampening=DAMPENING, lazy_columns=16)
        magnitude = weight * _magnitude_keep(weight, layout, int((~kept).sum()))
        assert _error(x, weight, pruned) <= _error(x, weight, magnitude)
        a = _system(x)  # in the damped metric SparseGPT minimises, the optimum for its own mask bounds it below
        optimum = 0.0
        for r in range(weight.shape[0]):
            columns = torch.nonzero(kept[r]).view(-1).tolist()
            best = weight[r].numpy().copy()
            best[columns] = _least_squares(a, weight[r].numpy(), {}, columns)
            best[~kept[r].numpy()] = 0.0
            optimum += float(np.sum((a @ (weight[r].numpy() - best)) ** 2))
        damped = float(np.sum((a @ (weight - pruned).numpy().T) ** 2))
        assert optimum <= damped * (1 + 1e-9)


def _magnitude_keep(weight: torch.Tensor, layout: Layout, pruned: int) -> torch.Tensor:
    """Keep mask of the largest |w| in the layout, `pruned` weights removed: per row in N:M groups, else over
    the layer by weights or blocks (their L1 norm)."""
    rows, columns = weight.shape
    if layout.nm is not None:
        groups = weight.abs().view(rows, -1, layout.nm[1])
        order = groups.argsort(-1, descending=True)[..., :layout.nm[0]]
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True).view(rows, columns)
        assert int((~keep).sum()) == pruned
        return keep
    size = layout.block
    blocks = weight.abs().view(rows, -1, size).sum(-1).reshape(-1)
    chosen = torch.zeros_like(blocks, dtype=torch.bool)
    chosen[blocks.argsort(descending=True)[:blocks.numel() - pruned // size]] = True
    return chosen.view(rows, -1).repeat_interleave(size, 1)


def test_a_dead_input_costs_nothing_and_is_pruned_first():
    weight, x = _layer()
    x[:, 4] = 0  # feature 4 is never active: pruning its weights changes no output
    pruned, kept = sparsegpt(weight, _hessian(x), Layout(2 / COLUMNS), inputs=COLUMNS, dampening=DAMPENING)
    assert not kept[:, 4].any()
    assert _error(x, weight, pruned) <= _error(x, weight, weight * kept)


def _count_layouts(model_factory, stage):
    return slimkit.one_shot(model_factory(), {"prune": {"method": "sparsegpt", "lazy_columns": 16, **stage}},
                            [(torch.randn(16, 3, 8, 8),) for _ in range(2)])


def _convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 10, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(10 * 8 * 8, 36), nn.ReLU(), nn.Linear(36, 4))


def test_exact_counts_in_every_layout_on_convs_and_linears():
    unstructured = _count_layouts(_convnet, {"sparsity": 0.6})
    for layer in (unstructured[2], unstructured[5]):
        assert int((layer.weight == 0).sum()) == round(0.6 * layer.weight.numel())
    nm = _count_layouts(_convnet, {"n": 2, "m": 4})
    # conv: 6 input channels = a group of 4 (keeps 2) and one of 2 (keeps both), at each of 9 positions
    assert is_nm(nm[2].weight, 2, 4) and int((nm[2].weight == 0).sum()) == 10 * 9 * 2
    assert is_nm(nm[5].weight, 2, 4) and int((nm[5].weight == 0).sum()) == 36 * 640 // 2
    blocks = _count_layouts(_convnet, {"sparsity": 0.5, "block": 4})
    for layer in (blocks[2], blocks[5]):
        zeros, target = int((layer.weight == 0).sum()), round(0.5 * layer.weight.numel())
        spans = math.ceil(layer.weight[0].numel() / 16)  # spans of 16 columns (or a little more)
        assert is_block_sparse(layer.weight, 4) and 0 <= target - zeros < 4 * spans  # under a block per span
    assert int((blocks[5].weight == 0).sum()) == round(0.5 * blocks[5].weight.numel())  # spans fit whole blocks
