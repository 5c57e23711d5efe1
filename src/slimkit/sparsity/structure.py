"""Names the sparsity structure a weight tensor has, for `slimkit info` and reports: the strongest of
pattern, N:M, input-channel blocks, balanced groups and unstructured that the zeros satisfy exactly."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slimkit.sparsity.balanced import group_nonzeros
from slimkit.sparsity.blocks import is_block_sparse
from slimkit.sparsity.nm import input_rows
from slimkit.sparsity.pattern import CENTRE, is_pattern_valid

BALANCED_TILES = (1, 2, 4, 8, 16, 32)  # the smallest tile that balances is the strongest claim (1: every kernel)
BLOCKS = (16, 8, 4, 2)  # the largest block that holds is the strongest claim (it implies the smaller ones)


def _nm(weight: Tensor) -> tuple[int, int] | None:
    """The smallest M (then N) such that every full group of M inputs holds exactly N non-zeros."""
    rows = input_rows(weight) != 0
    for m in range(2, min(16, rows.shape[1]) + 1):
        full = rows[:, : rows.shape[1] // m * m].reshape(-1, m).sum(1)
        n = int(full[0])
        if 0 < n < m and bool((full == n).all()):
            return n, m
    return None


def _balanced(weight: Tensor) -> tuple[int, int, int] | None:
    """(tile, kept, group size) when every full (filter, tile) group keeps the same count."""
    per_channel = weight[0, :1].numel()
    for tile in BALANCED_TILES:
        if weight.shape[1] < tile:
            continue
        counts = group_nonzeros(weight, tile)[: weight.shape[1] // tile]
        kept = int(counts[0][0])
        size = tile * per_channel
        if 0 < kept < size and all(bool((c == kept).all()) for c in counts):
            return tile, kept, size
    return None


def _block(weight: Tensor) -> int | None:
    """The largest block of consecutive input channels that every block fills or empties whole; a block
    larger than the input count (one partial block per row) is no claim about channels."""
    if not bool(torch.any(weight != 0)):
        return None
    return next((b for b in BLOCKS if weight.shape[1] >= b and is_block_sparse(weight, b)), None)


def _pattern(weight: Tensor, library: Tensor | None) -> dict[str, Any] | None:
    if weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        return None
    kernels = weight.reshape(-1, 9) != 0
    alive = kernels.any(1)
    if library is not None and library.numel():
        valid = is_pattern_valid(weight, library)
    else:  # no library stored: every kept kernel has the centre and 4 entries
        valid = bool((kernels[alive].sum(1) == 4).all()) and bool(kernels[alive, CENTRE].all())
    if not valid or not bool(alive.any()):
        return None
    distinct = len({tuple(k.tolist()) for k in kernels[alive]})
    return {"structure": "pattern", "kernels_kept": int(alive.sum()), "kernels": int(kernels.shape[0]),
            "patterns": distinct}


def detect_structure(weight: Tensor, library: Tensor | None = None) -> dict[str, Any]:
    """{'structure': dense | pattern | n:m | blocks | balanced | unstructured, ...details}. `library` is a
    stored PatDNN pattern library ((K, 9) bool), checked exactly when given. N:M comes before blocks: a
    block-2 weight that also keeps one pair in every 4 is reported as the fixed 2:4 format."""
    weight = weight.detach()
    if bool(torch.all(weight != 0)):
        return {"structure": "dense"}
    if (found := _pattern(weight, library)) is not None:
        return found
    if weight.dim() in (2, 4) and (nm := _nm(weight)) is not None:
        return {"structure": f"{nm[0]}:{nm[1]}", "n": nm[0], "m": nm[1]}
    if weight.dim() in (2, 4) and (block := _block(weight)) is not None:
        return {"structure": "blocks", "block": block}
    if weight.dim() in (2, 4) and (balanced := _balanced(weight)) is not None:
        tile, kept, size = balanced
        return {"structure": "balanced", "tile": tile, "kept_per_group": kept, "group_size": size}
    return {"structure": "unstructured"}
