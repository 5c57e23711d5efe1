"""Wanda: prune by weight magnitude times input norm, compared within each output row, with no weight update.

S_ij = |W_ij| · ‖X_j‖₂, X_j the j-th input feature over every token (or conv output position) of the
calibration batches. A weight that multiplies large inputs matters more than its magnitude says; comparing
within each output row (not over the whole layer) keeps every output's share of inputs, which the paper found
decisive for LLMs.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from slimkit.layers import canonical_weight
from slimkit.methods import register_method
from slimkit.sparsity.blocks import block_scores, expand_blocks
from slimkit.sparsity.layer_inputs import feature_count
from slimkit.sparsity.nm import nm_mask
from slimkit.sparsity.oneshot import Layout, OneShotConfig, OneShotModifier
from slimkit.sparsity.sequential import LayerStatistic
from slimkit.sparsity.topk import row_keep_counts, rowwise_masks
from slimkit.train import distributed


class WandaConfig(OneShotConfig):
    """Wanda: S_ij = |W_ij| · ‖X_j‖₂ over the calibration inputs, the lowest scores of each output row pruned.

    Unstructured: each row loses its share of `sparsity` (rows together lose exactly round(sparsity · n)).
    N:M: the n highest scores of every m consecutive input channels are kept. Blocks: a block of input channels
    scores the sum of its members' scores and each row keeps whole blocks best first. Layers are pruned in the
    order they run, each on the inputs the already-pruned layers before it give, as the paper's code does.

    References:
        Sun, Liu, Bair & Kolter, "A Simple and Effective Pruning Approach for Large Language Models", ICLR 2024,
        arXiv:2306.11695 (code: github.com/locuslab/wanda).
    """

    method: Literal["wanda"] = "wanda"


class FeatureNorms:
    """‖X_j‖₂² = Σ x_j² over every row of a layer's calibration inputs, accumulated in float64."""

    def __init__(self, features: int, device: torch.device):
        self.squares = torch.zeros(features, dtype=torch.float64, device=device)

    def add(self, rows: Tensor) -> None:
        self.squares += rows.pow(2).sum(0, dtype=torch.float64)

    def all_reduce(self) -> None:
        distributed.all_reduce_sum(self.squares)

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.squares).all())


def wanda_scores(weight: Tensor, squares: Tensor) -> Tensor:
    """|W| · ‖X_j‖₂ for a canonical weight (out, in, ...) and the squared norms of its flattened inputs (the
    order of weight.flatten(1)); the scores have the weight's shape."""
    norms = squares.sqrt().view(weight.shape[1:])
    return weight.abs().to(torch.float64) * norms


def layout_mask(scores: Tensor, layout: Layout) -> Tensor:
    """Keep mask (the scores' shape, canonical) of the best scores in `layout`, each output row ranked alone."""
    if layout.nm is not None:
        return nm_mask(scores, *layout.nm)
    out = scores.shape[0]
    if layout.block == 1:
        rows = scores.reshape(out, -1)
        keep = row_keep_counts(torch.full((out,), rows.shape[1], device=scores.device), layout.sparsity)
        return rowwise_masks(rows, keep).view_as(scores)
    ranked, sizes = block_scores(scores, layout.block)
    rows, row_sizes = ranked.reshape(out, -1), sizes.reshape(out, -1)
    kept = rowwise_masks(rows, row_keep_counts(row_sizes.sum(1), layout.sparsity), row_sizes)
    return expand_blocks(kept.view_as(ranked), layout.block, scores.shape[1])


@register_method(WandaConfig)
class WandaModifier(OneShotModifier[WandaConfig]):
    """Wanda on every selected layer (masks only: the weights are not changed)."""

    def new_statistic(self, module: nn.Module) -> LayerStatistic:
        return FeatureNorms(feature_count(module), canonical_weight(module).device)

    def prune_layer(self, weight: Tensor, statistic: LayerStatistic) -> tuple[Tensor, Tensor | None]:
        assert isinstance(statistic, FeatureNorms)  # new_statistic made it
        return layout_mask(wanda_scores(weight, statistic.squares), self.config.layout), None
