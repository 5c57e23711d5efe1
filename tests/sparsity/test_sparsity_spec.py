"""The spec's numeric examples and properties for OptG, PatDNN/PCONV, Sense, N:M and SNIP (sections 1, 2, 4, 7)."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from slimkit.sparsity.balanced import (
    SenseConfig,
    SenseModifier,
    balanced_mask,
    group_keep,
    group_nonzeros,
    is_balanced,
)
from slimkit.sparsity.blocks import is_block_sparse
from slimkit.sparsity.learned import optg_sparsity, sigmoid
from slimkit.sparsity.masks import add_mask
from slimkit.sparsity.nm import is_nm, nm_mask
from slimkit.sparsity.pattern import (
    candidate_patterns,
    connectivity_mask,
    extract_library,
    is_pattern_valid,
    kernel_patterns,
    kernels_kept,
    pattern_mask,
    project_connectivity,
    project_patterns,
    select_patterns,
)
from slimkit.sparsity.rearrange import permute_input
from slimkit.sparsity.topk import global_masks

# --- OptG -------------------------------------------------------------------------------------------------


def test_optg_schedule_values():
    """The spec's p_e at epoch e of E = 100 (beta = 1) is the default ramp at fraction e / 100 of the run."""
    expected = {0: 0.0, 45: 0.006024, 48: 0.107283, 50: 0.45, 52: 0.792717, 55: 0.893976, 60: 0.899959, 99: 0.9}
    for epoch, value in expected.items():
        assert optg_sparsity(epoch / 100, 0.9) == pytest.approx(value, abs=1e-6)
    assert sigmoid(0) == 0.5 and sigmoid(2) == pytest.approx(0.880797, abs=1e-6)


def test_optg_global_threshold_example():
    scores = {"a": torch.tensor([0.3, -0.1, 0.8, 0.05]), "b": torch.tensor([0.5, 0.2, -0.4, 0.9, 0.0, 0.1])}
    masks = global_masks(scores, 0.6)
    assert masks["a"].tolist() == [True, False, True, False]  # thr = 0.3, pr = 0.5
    assert masks["b"].tolist() == [True, False, False, True, False, False]  # pr = 0.667
    assert sum(int(m.sum()) for m in masks.values()) == 4


def test_optg_score_gradient_is_w_times_g_even_when_pruned():
    layer = nn.Linear(2, 2, bias=False)
    mask = add_mask(layer, scored=True)
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
        mask.mask.copy_(torch.tensor([[True, False], [False, True]]))
    grad = torch.tensor([[0.1, 0.2], [-0.4, 0.0]])
    (layer.weight * grad).sum().backward()
    assert torch.allclose(mask.scores.grad, torch.tensor([[0.1, -0.4], [-0.2, 0.0]]))
    assert torch.equal(layer.weight, torch.tensor([[1.0, 0.0], [0.0, 3.0]]))  # forward is W * M exactly
    assert torch.allclose(layer.parametrizations.weight.original.grad, grad * mask.mask)  # pruned: no CE grad


# --- PatDNN / PCONV -----------------------------------------------------------------------------------------

FLAWED_LIBRARY = torch.tensor([
    [0, 0, 0, 0, 1, 1, 0, 1, 1], [1, 1, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 1, 1, 0, 1, 1, 0], [0, 1, 1, 0, 1, 1, 0, 0, 0],
    [0, 0, 0, 1, 0, 0, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1, 1, 1],
], dtype=torch.bool)
KERNEL = torch.tensor([0.1, -0.9, 0.2, 0.05, 0.7, -0.6, 0.0, 0.3, 0.4])


def test_pattern_selection_example():
    norms = (KERNEL.unsqueeze(0) * FLAWED_LIBRARY).norm(dim=1)
    assert norms.tolist() == pytest.approx([1.0488, 1.1456, 0.7632, 1.3038, 0.5025, 0.9287, 1.1045, 0.781], abs=1e-4)
    assert int(select_patterns(KERNEL.reshape(1, 1, 3, 3), FLAWED_LIBRARY)[0]) == 3
    projected = project_patterns(KERNEL.reshape(1, 1, 3, 3), FLAWED_LIBRARY)
    assert ((projected != 0).reshape(3, 3).int().tolist()) == [[0, 1, 1], [0, 1, 1], [0, 0, 0]]
    own = kernel_patterns(KERNEL.reshape(1, 3, 3))  # extraction: centre + top 3, not in that library
    assert own.reshape(3, 3).int().tolist() == [[0, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_candidates_and_library_extraction():
    candidates = candidate_patterns()
    assert candidates.shape == (56, 9) and bool(candidates[:, 4].all()) and bool((candidates.sum(1) == 4).all())
    torch.manual_seed(0)
    base = torch.randn(40, 3, 3)
    kernels = torch.cat([base, base[:10], base[:10]])  # the first 10 kernels' patterns are 3x as frequent
    library = extract_library(kernels, 5)
    assert library.shape == (5, 9) and bool(library[:, 4].all()) and bool((library.sum(1) == 4).all())
    own = kernel_patterns(kernels)
    counts = [int((own == p).all(1).sum()) for p in library]
    assert counts == sorted(counts, reverse=True)
    everything = [int((own == p).all(1).sum()) for p in candidates]
    assert min(counts) >= sorted(everything, reverse=True)[4]


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 12), inp=st.integers(1, 9), ratio=st.floats(1.0, 10.0), k=st.integers(1, 12),
       group=st.sampled_from([1, 1, 2, 3, 4, 6]), block=st.sampled_from([1, 1, 2, 4]), seed=st.integers(0, 2**16))
def test_pattern_and_connectivity_projections(out, inp, ratio, k, group, block, seed):
    """Kept kernels: exactly ceil(n / r_c) of the n tiles (a group of filters by a block of input channels;
    single kernels for group 1 and block 1, PatDNN); the kernels of one tile keep identical supports; both
    projections are idempotent."""
    torch.manual_seed(seed)
    weight = torch.randn(out, inp, 3, 3)
    library = extract_library(weight, k)
    patterned = project_patterns(project_connectivity(weight, ratio, group, block), library, group, block)
    assert is_pattern_valid(patterned, library)
    support = patterned != 0
    assert torch.equal(support, connectivity_mask(weight, ratio, group, block)
                       & pattern_mask(weight, library, group, block) & (weight != 0))
    groups, blocks = -(-out // group), -(-inp // block)
    for g, b in itertools.product(range(groups), range(blocks)):
        members = support[g * group: (g + 1) * group, b * block: (b + 1) * block].reshape(-1, 9)
        assert bool((members == members[:1]).all())
    kept = support.reshape(out, inp, 9).any(-1)[::group, ::block]  # one entry per tile
    assert int(kept.sum()) == math.ceil(groups * blocks / ratio - 1e-9) == kernels_kept(groups * blocks, ratio)
    if block == 4:
        assert is_block_sparse(patterned, 4)  # the int8 operator's layout
    assert torch.equal(project_patterns(patterned, library, group, block), patterned)  # idempotent
    assert torch.equal(project_connectivity(patterned, ratio, group, block), patterned)
    assert not is_pattern_valid(weight, library)  # a dense random kernel fits no 4-entry pattern


def test_connectivity_ranks_input_blocks_by_energy_scaling_a_partial_block():
    """An independent count: 1 filter, 6 input channels in blocks of 4 (the last holds 2). Block energies
    4 x 1 = 4 and 2 x 1.5 = 3, the partial one scaled by 4/2 to 6: it wins the one tile r_c = 2 keeps."""
    weight = torch.zeros(1, 6, 3, 3)
    weight[0, :4, 1, 1] = 1.0
    weight[0, 4:, 1, 1] = math.sqrt(1.5)
    kept = connectivity_mask(weight, 2.0, block=4)[0, :, 1, 1]
    assert kept.tolist() == [False] * 4 + [True] * 2
    weight[0, 4:, 1, 1] = math.sqrt(0.9)  # 2 x 0.9 x 2 = 3.6 < 4: the full block wins
    assert connectivity_mask(weight, 2.0, block=4)[0, :, 1, 1].tolist() == [True] * 4 + [False] * 2


def test_filter_group_keeps_the_most_energetic_shared_pattern():
    """Two filters of one group: the shared pattern maximises their summed energy, not either one's own."""
    library = torch.zeros(2, 9, dtype=torch.bool)
    library[0, [0, 1, 2, 4]] = True
    library[1, [4, 6, 7, 8]] = True
    weight = torch.zeros(2, 1, 9)
    weight[0, 0, [0, 1, 2]] = 1.0  # energy 3 on pattern 0
    weight[1, 0, [6, 7, 8]] = 1.2  # energy 4.32 on pattern 1
    weight = weight.reshape(2, 1, 3, 3)
    assert select_patterns(weight, library).tolist() == [0, 1]
    assert select_patterns(weight, library, group=2).tolist() == [1, 1]
    # the same two kernels as two input channels of one filter, in one block of 2: the same choice
    assert select_patterns(weight.reshape(1, 2, 3, 3), library, block=2).tolist() == [1, 1]


def test_connectivity_keeps_ceil_n_over_3_6():
    weight = torch.randn(16, 16, 1, 1)
    assert int(connectivity_mask(weight, 3.6).reshape(256, -1).any(1).sum()) == math.ceil(256 / 3.6)


# --- Sense ---------------------------------------------------------------------------------------------------


def test_sense_group_counts():
    assert group_keep(18, 0.5) == 9 and group_keep(9, 0.5) == 4 and group_keep(18, 0.8) == 3
    torch.manual_seed(0)
    weight = torch.randn(6, 5, 3, 3)  # tile 2: groups of 18, 18 and a partial 9
    mask = balanced_mask(weight.abs(), 2, 0.5)
    counts = group_nonzeros(weight * mask, 2)
    assert [c.tolist() for c in counts] == [[9] * 6, [9] * 6, [4] * 6]
    assert is_balanced(weight * mask, 2, 0.5) and not is_balanced(weight, 2, 0.5)


def test_sense_kernel_balance_keeps_an_exact_count_in_every_kernel():
    # the paper's definition: "the sparsity ratio (zero element percentage) of each kernel at 1/2"; a 3x3 kernel
    # keeps floor(9 / 2) = 4, at s = 0.7 floor(2.7) = 2
    torch.manual_seed(0)
    scores = torch.randn(6, 5, 3, 3).abs()
    modifier = SenseModifier(SenseConfig(balance="kernel"))
    for sparsity, kept in ((0.5, 4), (0.7, 2)):
        mask = modifier.select({"conv": scores}, sparsity)["conv"]
        assert mask.reshape(30, 9).sum(1).tolist() == [kept] * 30
        # each kernel keeps its own largest scores: the kept ones are its top `kept`
        ranked = scores.reshape(30, 9).sort(dim=1, descending=True, stable=True).indices[:, :kept]
        assert torch.equal(mask.reshape(30, 9), torch.zeros(30, 9, dtype=torch.bool).scatter_(1, ranked, True))
    assert is_balanced(scores * mask, 1, 0.7) and not is_balanced(scores * balanced_mask(scores, 2, 0.5), 1, 0.5)
    assert modifier.summary()["tile"] == 1 and modifier.summary()["balance"] == "kernel"


def test_sense_kernel_balance_refuses_kernels_that_keep_nothing_and_a_tile():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1), nn.Flatten(), nn.Linear(4, 2))
    issues = SenseModifier(SenseConfig(balance="kernel")).check(model)
    # the first conv and the last linear are not selected by default; the 3x3 conv keeps 4 of 9
    assert issues == ["layer '2': balance: kernel keeps floor((1 - s) k) of each kernel's k weights, and its kernels "
                      "of 1 weight keep none at s = 0.5; exclude it (layers.exclude) or use balance: group"]
    assert SenseModifier(SenseConfig(balance="group")).check(model) == []
    with pytest.raises(ValueError, match="'tile': groups of 4 channels apply to balance: group"):
        SenseConfig(balance="kernel", tile=4)
    saved = SenseConfig(balance="kernel").model_dump(mode="json")  # a run's recipe.yaml writes every key
    assert SenseConfig.model_validate(saved).group_channels == 1


def test_channel_permutation_is_a_relabelling():
    torch.manual_seed(0)
    x, w = torch.randn(2, 7, 6, 6), torch.randn(4, 7, 3, 3)
    perm = torch.randperm(7)
    px, pw = permute_input(x, w, perm)
    assert torch.allclose(F.conv2d(px, pw, padding=1), F.conv2d(x, w, padding=1), atol=1e-5)
    lx, lw = permute_input(torch.randn(3, 7), torch.randn(5, 7), perm)
    assert torch.allclose(F.linear(lx, lw), F.linear(lx[:, torch.argsort(perm)], lw[:, torch.argsort(perm)]), atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(out=st.integers(1, 6), inp=st.integers(1, 20), tile=st.integers(1, 8), sparsity=st.floats(0, 0.95),
       kernel=st.sampled_from([1, 3]), seed=st.integers(0, 2**16))
def test_balanced_mask_exact_per_group(out, inp, tile, sparsity, kernel, seed):
    torch.manual_seed(seed)
    weight = torch.randn(out, inp, kernel, kernel)
    mask = balanced_mask(weight.abs(), tile, sparsity)
    for count, start in zip(group_nonzeros(mask.float(), tile), range(0, inp, tile), strict=True):
        size = min(tile, inp - start) * kernel * kernel
        assert bool((count == group_keep(size, sparsity)).all())
    assert is_balanced(weight * mask, tile, sparsity)


# --- N:M -----------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4), extra=st.integers(1, 5), out=st.integers(1, 5), inp=st.integers(1, 17),
       conv=st.booleans(), seed=st.integers(0, 2**16))
def test_nm_mask_is_valid_and_exact(n, extra, out, inp, conv, seed):
    m = n + extra
    torch.manual_seed(seed)
    weight = torch.randn(out, inp, 3, 3) if conv else torch.randn(out, inp)
    mask = nm_mask(weight.abs(), n, m)
    pruned = weight * mask
    assert is_nm(pruned, n, m)
    full, rest = divmod(inp, m)
    per_row = full * n + min(n, rest)
    rows = out * (9 if conv else 1)
    assert int(mask.sum()) == rows * per_row
    if inp >= m and n < m:
        assert not is_nm(weight, n, m)


def test_nm_runs_along_input_channels_per_kernel_position():
    weight = torch.zeros(1, 4, 2, 2)
    weight[0, :, 0, 0] = torch.tensor([1.0, 4.0, 3.0, 2.0])
    weight[0, :, 1, 1] = torch.tensor([5.0, 1.0, 1.0, 6.0])
    mask = nm_mask(weight.abs(), 2, 4)
    assert mask[0, :, 0, 0].tolist() == [False, True, True, False]
    assert mask[0, :, 1, 1].tolist() == [True, False, False, True]
