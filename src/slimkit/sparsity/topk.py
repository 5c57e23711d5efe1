"""Exact-count keep masks. The count asked for is the count you get; ties go to the lower flat index.

With `sizes` the entries are blocks of several weights (blocks.py) and counts stay in weights: blocks are
taken best first while fewer than `keep` weights are kept, so the block that reaches the count is kept
whole and at most (largest block - 1) weights more than `keep` survive; the achieved sparsity never
exceeds the target, and is exact whenever the count falls on a block boundary."""

from __future__ import annotations

import torch
from torch import Tensor

from slimkit.errors import SlimkitError


def keep_count(numel: int, sparsity: float) -> int:
    """How many of `numel` entries survive at `sparsity`: numel - round(sparsity * numel)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must lie in [0, 1), not {sparsity}")
    return numel - round(sparsity * numel)


def topk_mask(scores: Tensor, keep: int, tiebreak: Tensor | None = None, sizes: Tensor | None = None) -> Tensor:
    """Boolean mask of the `keep` largest scores. Equal scores go to the larger `tiebreak` value, then to
    the lower flat index (stable sorts), so the result is deterministic. With `sizes` (weights per entry),
    entries are kept best first until at least `keep` weights are kept."""
    flat = scores.reshape(-1)
    if tiebreak is None:
        order = torch.sort(flat, descending=True, stable=True).indices
    else:
        first = torch.sort(tiebreak.reshape(-1), descending=True, stable=True).indices
        order = first[torch.sort(flat[first], descending=True, stable=True).indices]
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if sizes is None:
        mask[order[:keep]] = True
    else:
        ordered = sizes.reshape(-1).to(torch.int64)[order]
        mask[order[torch.cumsum(ordered, 0) - ordered < keep]] = True  # weights kept before this entry
    return mask.view_as(scores)


def refuse_empty(masks: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """A layer with no weight left disconnects the network: refuse it, naming the layers."""
    empty = [name for name, mask in masks.items() if mask.numel() and not bool(mask.any())]
    if empty:
        raise SlimkitError(f"pruning to {sparsity:.2%} would remove every weight of {', '.join(empty[:5])}"
                           f"{' and more' if len(empty) > 5 else ''}, which disconnects the network; cap each "
                           f"layer with max_layer_sparsity (e.g. 0.98), use scope: layer, or lower the sparsity")
    return masks


def layerwise_masks(scores: dict[str, Tensor], sparsity: float, tiebreak: dict[str, Tensor] | None = None,
                    sizes: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Each layer keeps its own exact share (of its weights, when `sizes` makes entries blocks)."""
    return {name: topk_mask(s, keep_count(_weights(s, sizes, name), sparsity), tiebreak[name] if tiebreak else None,
                            sizes[name] if sizes else None)
            for name, s in scores.items()}


def _weights(scores: Tensor, sizes: dict[str, Tensor] | None, name: str) -> int:
    """Weights behind a layer's entries: one each, or the block sizes summed."""
    return int(sizes[name].sum()) if sizes else scores.numel()


def global_masks(scores: dict[str, Tensor], sparsity: float, tiebreak: dict[str, Tensor] | None = None,
                 max_layer_sparsity: float | None = None, sizes: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """One ranking over all layers; exactly keep_count(total) entries survive in all.

    With `max_layer_sparsity` (Torch-Pruning's max_pruning_ratio, per weight), every layer first keeps its
    own best keep_count(n, cap) entries and the rest of the budget goes by the global ranking; a target
    the cap cannot meet is refused. With `sizes` the counts are weights and entries whole blocks; a layer's
    reserved blocks are kept even where their rounding up passes the global count.
    """
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).float() for n in names])
    second = torch.cat([tiebreak[n].reshape(-1).float() for n in names]) if tiebreak else None
    weights = torch.cat([sizes[n].reshape(-1) for n in names]) if sizes else None
    keep = keep_count(sum(_weights(scores[n], sizes, n) for n in names), sparsity)
    if max_layer_sparsity is not None and max_layer_sparsity < 1:
        floors = {n: keep_count(_weights(scores[n], sizes, n), max_layer_sparsity) for n in names}
        if sum(floors.values()) > keep:
            raise SlimkitError(f"sparsity {sparsity:.2%} cannot be met with max_layer_sparsity "
                               f"{max_layer_sparsity:.2%}: the layers' floors keep {sum(floors.values())} weights, "
                               f"more than the {keep} the target allows; raise the cap or lower the sparsity")
        reserved = torch.cat([topk_mask(scores[n].float(), floors[n], tiebreak[n] if tiebreak else None,
                                        sizes[n] if sizes else None).reshape(-1) for n in names])
        flat = flat.masked_fill(reserved, float("inf"))
        if weights is not None:
            keep = max(keep, int(weights[reserved].sum()))
    kept = topk_mask(flat, keep, second, weights)
    out, offset = {}, 0
    for name in names:
        n = scores[name].numel()
        out[name] = kept[offset: offset + n].view_as(scores[name])
        offset += n
    return out


def row_keep_counts(row_weights: Tensor, sparsity: float) -> Tensor:
    """Weights each row keeps when rows are ranked one by one, so that together they keep exactly
    keep_count(total, sparsity): row r prunes round(s·W_r) - round(s·W_(r-1)), W_r the weights of rows 0..r
    (cumulative rounding), which is its own share s·w_r to within one weight."""
    ends = torch.round(torch.cumsum(row_weights.to(torch.float64), 0) * sparsity)
    pruned = torch.diff(ends, prepend=ends.new_zeros(1)).to(torch.int64)
    return row_weights.to(torch.int64) - pruned


def rowwise_masks(scores: Tensor, keep: Tensor, sizes: Tensor | None = None) -> Tensor:
    """Boolean mask of each row's best entries of `scores` (rows, entries): `keep[r]` of them, or, with `sizes`
    (weights per entry), entries best first until at least `keep[r]` weights are kept. Ties go to the lower
    index (a stable sort), as in `topk_mask`."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    if sizes is None:
        before = torch.arange(scores.shape[1], device=scores.device).expand_as(order)
    else:
        ordered = sizes.to(torch.int64).gather(1, order)
        before = torch.cumsum(ordered, 1) - ordered  # weights kept ahead of each entry
    kept = before < keep.to(scores.device).unsqueeze(1)
    return torch.zeros_like(kept).scatter_(1, order, kept)
