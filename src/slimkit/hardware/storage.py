"""How an accelerator stores a layer's weights, and what that costs in bits: dense, or compressed in one of two
formats, whichever is smallest (the cost models name the one they picked).

    dense    every weight at `bits`                                         n * bits
    bitmap   one bit per weight (non-zero or not), then the non-zeros       n + nnz * bits
    index    each non-zero with its position inside its group of g weights  nnz * (bits + ceil(log2 g))

A bitmap costs a fixed bit per weight, an index ceil(log2 g) bits per non-zero, so the bitmap wins once more
than about 1 / ceil(log2 g) of the weights are kept: at Sense's 1/2 with 8-bit weights and groups of 72
(8 channels x 3 x 3) the bitmap stores 5 bits per weight, the index 7.5 and dense 8. Decoding either format is
taken as free (docs/hardware.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class StoredWeights:
    """A layer's weights as stored: the format picked and its size in bits."""

    format: str
    bits: int


def index_bits(group: int) -> int:
    """Bits that name one position among `group` (0 for a group of one)."""
    return math.ceil(math.log2(group)) if group > 1 else 0


def stored_weights(weight: Tensor, bits: int, group: int, *, compressed: bool = True) -> StoredWeights:
    """The smallest of the dense, bitmap and index formats for `weight` at `bits` per value, with index
    positions counted inside groups of `group` weights; only dense when `compressed` is off. Ties go to the
    simpler format (dense, then bitmap)."""
    count = weight.numel()
    dense = StoredWeights("dense", count * bits)
    if not compressed:
        return dense
    kept = int(torch.count_nonzero(weight))
    candidates = [dense, StoredWeights("bitmap", count + kept * bits),
                  StoredWeights("index", kept * (bits + index_bits(group)))]
    return min(candidates, key=lambda s: s.bits)  # min keeps the first of equal sizes
