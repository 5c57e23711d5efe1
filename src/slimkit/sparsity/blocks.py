"""Blocks of consecutive input channels kept or dropped together, the layout int8 sparse kernels need.

For a conv weight (out, in, kh, kw), block j of filter o at kernel position (y, x) is the `block` weights
(o, [j*block, (j+1)*block), y, x); for a linear weight (out, in) it is (o, [j*block, (j+1)*block)). With
block 4, one 32-bit lane holds a block's four int8 weights, so a kernel (vpmaddubsw, vpdpbusd) multiplies
whole lanes and stores one index per lane. When `in` is not a multiple of `block`, the last block of each
row is partial: it holds the in % block remaining channels.

A block is ranked by the sum of its members' scores (for magnitude, the block's L1 norm: the pruned block
removes that much weight mass, the block analogue of |w|). A partial block's sum is scaled by block/size, so
it competes as a full block of the same mean score instead of losing for having fewer members.
"""

from __future__ import annotations

import torch
from torch import Tensor

BLOCK_SIZES = (1, 2, 4, 8, 16)  # 1 is unstructured; 4 fills a 32-bit lane with int8 weights


def check_block(block: int) -> int:
    """`block` when it is an allowed size, else a ValueError naming the sizes (for config validators)."""
    if block not in BLOCK_SIZES:
        raise ValueError(f"block must be one of {', '.join(map(str, BLOCK_SIZES))} (input channels pruned "
                         f"together; 1 = unstructured), not {block}")
    return block


def block_count(inputs: int, block: int) -> int:
    """Blocks along `inputs` channels (the last one partial when block does not divide inputs)."""
    return -(-inputs // block)


def block_sizes(shape: torch.Size | tuple[int, ...], block: int, device: torch.device | None = None) -> Tensor:
    """Member count of every block of a weight of `shape` (out, in, ...): int64, shaped (out, nb, ...)."""
    out, inputs, rest = shape[0], shape[1], tuple(shape[2:])
    nb = block_count(inputs, block)
    sizes = torch.full((nb,), block, dtype=torch.int64, device=device)
    sizes[-1] = inputs - (nb - 1) * block
    return sizes.view(1, nb, *([1] * len(rest))).expand(out, nb, *rest).contiguous()


def block_sums(values: Tensor, block: int) -> Tensor:
    """Sum of `values` (out, in, ...) over each block: (out, nb, ...), block j of row o at index (o, j, ...)."""
    out, inputs, rest = values.shape[0], values.shape[1], tuple(values.shape[2:])
    nb = block_count(inputs, block)
    padded = values.new_zeros((out, nb * block, *rest))
    padded[:, :inputs] = values
    return padded.view(out, nb, block, *rest).sum(2)


def block_scores(scores: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """(ranking score, size) of every block: the members' sum, times block/size for a partial last block."""
    sizes = block_sizes(scores.shape, block, scores.device)
    sums = block_sums(scores.float(), block)
    return sums * (block / sizes), sizes


def expand_blocks(block_mask: Tensor, block: int, inputs: int) -> Tensor:
    """A per-block mask (out, nb, ...) as a per-weight mask (out, inputs, ...)."""
    return block_mask.repeat_interleave(block, dim=1)[:, :inputs].contiguous()


def is_block_sparse(weight: Tensor, block: int) -> bool:
    """True when every block of `block` consecutive input channels is all zero or all non-zero."""
    if weight.dim() < 2:
        return False
    zeros = block_sums((weight == 0).to(torch.int64), block)
    return bool(((zeros == 0) | (zeros == block_sizes(weight.shape, block, weight.device))).all())
