"""SparseGPT: prune a layer column by column, each pruned weight's error compensated by the weights not yet
processed (optimal brain surgeon updates through the inverse Hessian of the layer's inputs).

The layer's squared output error over the calibration rows X is (w - ŵ)ᵀ H (w - ŵ) per output row, with
H = 2 XᵀX / N + λI (λ a `dampening` share of H's mean diagonal). Columns are visited in order; when column c
is fixed (pruned to 0, or kept as it stands), the columns after it take the optimal update
δ = -(w_c - q_c) / [H_F⁻¹]_cc · [H_F⁻¹]_c,F over the columns F = c, c+1, ... not yet fixed. Every row shares
one H, and the rows of the upper Cholesky factor U of H⁻¹ are those updates for every c at once
(U_c,F = [H_F⁻¹]_c,F / sqrt([H_F⁻¹]_cc)), so the whole layer costs one Cholesky decomposition. Updates are
applied lazily, `lazy_columns` columns at a time (the papers' block size B_s).

Masks are chosen as the sweep goes (adaptive mask selection): at the start of each span of `lazy_columns`
columns, the weights of the span with the least w²/U_cc² (the OBS error of removing each alone) are pruned,
computed on the weights as the sweep has updated them so far; N:M groups are chosen when the sweep reaches
them. Each kept weight thus ends at the least-squares optimum over itself and the columns after it, given the
columns before it as they ended; weights before a pruned one are not revisited, so the layer is the papers'
approximation of the least-squares optimum for its whole mask, not that optimum.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.layers import canonical_weight
from slimkit.methods import register_method
from slimkit.sparsity.blocks import block_scores, expand_blocks
from slimkit.sparsity.layer_inputs import feature_count, layout_order
from slimkit.sparsity.oneshot import Layout, OneShotConfig, OneShotModifier
from slimkit.sparsity.sequential import LayerStatistic
from slimkit.sparsity.topk import topk_mask
from slimkit.train import distributed


class SparseGptConfig(OneShotConfig):
    """SparseGPT: OBS updates through the inverse input Hessian H = 2XᵀX/N + λI, masks chosen per span of columns.

    Column by column, a pruned weight w_c goes to 0 and the columns not yet processed take
    δ = -w_c / [H_F⁻¹]_cc · [H_F⁻¹]_c,F, computed for all rows from one Cholesky factor of H⁻¹; at the start of
    each span of `lazy_columns` columns the span's weights of least w_c² / [H_F⁻¹]_cc are pruned (N:M: within
    each group as the sweep reaches it; blocks: whole blocks of input channels by their summed errors).

    References:
        Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
        ICML 2023, arXiv:2301.00774 (code: github.com/IST-DASLab/sparsegpt).
    """

    method: Literal["sparsegpt"] = "sparsegpt"
    dampening: float = Field(0.01, gt=0, description="λ as a share of the mean diagonal of H (the code's percdamp)")
    lazy_columns: int = Field(128, ge=1, description="columns whose updates are applied together, and over which "
                                                     "one mask is chosen (the code's blocksize)")


class InputHessian:
    """Σ x xᵀ and the row count of a layer's calibration inputs, in float32 (float64 for a float64 layer)."""

    def __init__(self, features: int, device: torch.device, dtype: torch.dtype):
        self.sums = torch.zeros(features, features, dtype=dtype, device=device)
        self.rows = torch.zeros((), dtype=torch.float64, device=device)

    def add(self, rows: Tensor) -> None:
        rows = rows.to(self.sums.dtype)
        self.sums.addmm_(rows.t(), rows)
        self.rows += rows.shape[0]

    def all_reduce(self) -> None:
        distributed.all_reduce_sum(self.sums)
        distributed.all_reduce_sum(self.rows)

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.sums).all())

    def hessian(self) -> Tensor:
        """H = 2 XᵀX / N (without the dampening)."""
        return self.sums * (2.0 / max(float(self.rows), 1.0))


def _group_starts(columns: int, inputs: int, size: int) -> list[int]:
    """Where each group of `size` input channels starts, in a layout of `columns // inputs` runs of `inputs`
    channels (one per kernel position); the last group of a run is partial when size does not divide inputs."""
    return [run + start for run in range(0, columns, inputs) for start in range(0, inputs, size)]


def _spans(starts: list[int], columns: int, lazy: int) -> list[tuple[int, int]]:
    """Consecutive spans of about `lazy` columns that begin and end on group starts."""
    spans, begin = [], 0
    for start in [*starts[1:], columns]:
        if start - begin >= lazy or start == columns:
            spans.append((begin, start))
            begin = start
    return spans


def sparsegpt(weight: Tensor, hessian: Tensor, layout: Layout, *, inputs: int, dampening: float = 0.01,
              lazy_columns: int = 128, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(pruned weight, keep mask) of a weight matrix (rows, columns) in layout order (runs of `inputs`
    consecutive input channels, one run per kernel position) with its inputs' Hessian H (columns, columns).
    A span [b, e) of columns prunes round(s·rows·e) - round(s·rows·b) weights, so the layer loses exactly
    round(s·n) (in blocks: at most block - 1 fewer per span). A fixed `keep` mask skips the selection (the
    code's `mask` argument). Computes in float32 (float64 for a float64 weight)."""
    dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
    rows, columns = weight.shape
    w = weight.to(dtype).clone()
    h = hessian.to(dtype).clone()
    dead = torch.diagonal(h) == 0  # an input that is always 0: its weights cost nothing, wherever they are
    h[dead, dead] = 1
    torch.diagonal(h).add_(dampening * torch.diagonal(h).mean())
    try:
        u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except torch.linalg.LinAlgError:
        raise SlimkitError(f"the inputs' Hessian is not positive definite in {dtype} even with dampening "
                           f"{dampening}; raise dampening") from None
    kept = torch.ones(rows, columns, dtype=torch.bool, device=w.device) if keep is None else keep.clone()
    size = layout.nm[1] if layout.nm is not None else layout.block
    starts = _group_starts(columns, inputs, size)
    groups = set(starts) if layout.nm is not None and keep is None else set()
    for begin, end in _spans(starts, columns, lazy_columns):
        w1, u1 = w[:, begin:end].clone(), u[begin:end, begin:end]
        errors = torch.zeros_like(w1)
        if keep is None and layout.nm is None:
            kept[:, begin:end] = _span_keep(_removal_errors(w1, u1, dead[begin:end]), layout, begin, end, inputs)
        for i in range(end - begin):
            if begin + i in groups and layout.nm is not None:
                stop = min(begin + i + layout.nm[1], _run_end(begin + i, inputs)) - begin
                removal = _removal_errors(w1[:, i:stop], u1[i:stop, i:stop], dead[begin + i:begin + stop])
                kept[:, begin + i:begin + stop] = _largest(removal, layout.nm[0])
            q = w1[:, i] * kept[:, begin + i]
            errors[:, i] = (w1[:, i] - q) / u1[i, i]
            w1[:, i:] -= errors[:, i:i + 1] * u1[i:i + 1, i:]
            w1[:, i] = q
        w[:, begin:end] = w1
        w[:, end:] -= errors @ u[begin:end, end:]
    return w, kept


def _run_end(column: int, inputs: int) -> int:
    """The end of the run of input channels (one kernel position) that `column` lies in."""
    return (column // inputs + 1) * inputs


def _removal_errors(w1: Tensor, u1: Tensor, dead: Tensor) -> Tensor:
    """w² / U_cc², the OBS error of removing each weight alone; 0 for an input that is always 0."""
    return (w1 ** 2 / torch.diagonal(u1) ** 2).masked_fill(dead, 0.0)


def _largest(errors: Tensor, n: int) -> Tensor:
    """Keep mask of each row's n largest removal errors (ties: the lower column)."""
    order = torch.sort(errors, dim=1, descending=True, stable=True).indices[:, :n]
    return torch.zeros_like(errors, dtype=torch.bool).scatter_(1, order, True)


def _span_keep(errors: Tensor, layout: Layout, begin: int, end: int, inputs: int) -> Tensor:
    """Keep mask of the span [begin, end): its share of the layer's exact count, the least error pruned first;
    in blocks, whole blocks of input channels by their summed errors (a run's partial last block scaled)."""
    rows = errors.shape[0]
    pruned = round(layout.sparsity * rows * end) - round(layout.sparsity * rows * begin)
    keep = errors.numel() - pruned
    if layout.block == 1:
        return topk_mask(errors, keep)
    cuts = list(pairwise([begin, *range(_run_end(begin, inputs), end, inputs), end]))  # within one kernel position
    pieces = [block_scores(errors[:, s - begin:e - begin], layout.block) for s, e in cuts]
    kept = topk_mask(torch.cat([p[0] for p in pieces], 1), keep, sizes=torch.cat([p[1] for p in pieces], 1))
    masks, offset = [], 0
    for (s, e), (ranked, _) in zip(cuts, pieces, strict=True):
        masks.append(expand_blocks(kept[:, offset:offset + ranked.shape[1]], layout.block, e - s))
        offset += ranked.shape[1]
    return torch.cat(masks, 1)


@register_method(SparseGptConfig)
class SparseGptModifier(OneShotModifier[SparseGptConfig]):
    """SparseGPT on every selected layer: masks, and the kept weights updated to compensate."""

    def new_statistic(self, module: nn.Module) -> LayerStatistic:
        weight = canonical_weight(module)
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        return InputHessian(feature_count(module), weight.device, dtype)

    def prune_layer(self, weight: Tensor, statistic: LayerStatistic) -> tuple[Tensor, Tensor | None]:
        assert isinstance(statistic, InputHessian)  # new_statistic made it
        order = layout_order(weight)
        hessian = statistic.hessian()[order][:, order]
        pruned, kept = sparsegpt(weight.flatten(1)[:, order], hessian, self.config.layout, inputs=weight.shape[1],
                                 dampening=self.config.dampening, lazy_columns=self.config.lazy_columns)
        restore = torch.argsort(order)
        return kept[:, restore].view_as(weight), pruned[:, restore].view_as(weight)
