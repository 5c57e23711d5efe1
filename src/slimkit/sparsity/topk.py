"""Exact-count keep masks. The count asked for is the count you get; ties go to the lower flat index."""

from __future__ import annotations

import torch
from torch import Tensor


def keep_count(numel: int, sparsity: float) -> int:
    """How many of `numel` entries survive at `sparsity`: numel - round(sparsity * numel)."""
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must lie in [0, 1), not {sparsity}")
    return numel - round(sparsity * numel)


def topk_mask(scores: Tensor, keep: int, tiebreak: Tensor | None = None) -> Tensor:
    """Boolean mask of the `keep` largest scores. Equal scores go to the larger `tiebreak` value, then to
    the lower flat index (stable sorts), so the result is deterministic."""
    flat = scores.reshape(-1)
    if tiebreak is None:
        order = torch.sort(flat, descending=True, stable=True).indices
    else:
        first = torch.sort(tiebreak.reshape(-1), descending=True, stable=True).indices
        order = first[torch.sort(flat[first], descending=True, stable=True).indices]
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    mask[order[:keep]] = True
    return mask.view_as(scores)


def layerwise_masks(scores: dict[str, Tensor], sparsity: float,
                    tiebreak: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Each layer keeps its own exact share."""
    return {name: topk_mask(s, keep_count(s.numel(), sparsity), tiebreak[name] if tiebreak else None)
            for name, s in scores.items()}


def global_masks(scores: dict[str, Tensor], sparsity: float,
                 tiebreak: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """One ranking over all layers; exactly keep_count(total) entries survive in all."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).float() for n in names])
    second = torch.cat([tiebreak[n].reshape(-1).float() for n in names]) if tiebreak else None
    keep = topk_mask(flat, keep_count(flat.numel(), sparsity), second)
    out, offset = {}, 0
    for name in names:
        n = scores[name].numel()
        out[name] = keep[offset: offset + n].view_as(scores[name])
        offset += n
    return out
