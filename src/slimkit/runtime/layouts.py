"""Weight layouts both backends build their sparse layers from: CSR over output channels (a conv's entries
padded to groups of GROUP) and over output rows (a linear layer's). Pure numpy, so the engine side can lay
out its weights without loading numba, and both backends run the very same entries.
"""

from __future__ import annotations

import numpy as np

GROUP = 4  # a conv's non-zeros fused per pass; both backends' kernel loops are written for exactly 4


def conv_by_output(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CSR over output channels of a (O, C, KH, KW) weight: (ptr, channel, kernel offset index, value), the
    offset index being kh * KW + kw (turned into kh * Wp + kw once the input width is known).

    Each output channel's entries are padded with zero weights (channel 0, offset 0) to a multiple of GROUP,
    so the kernel can fuse GROUP multiply-adds into one pass over its accumulator."""
    out_c = weight.shape[0]
    o, c, kh, kw = np.nonzero(weight)
    counts = np.bincount(o, minlength=out_c)
    ptr = np.concatenate([[0], np.cumsum(-(-counts // GROUP) * GROUP)]).astype(np.int64)
    slot = ptr[o] + np.arange(o.size) - np.repeat(np.cumsum(counts) - counts, counts)  # rank within its output
    chan, position = np.zeros(ptr[-1], np.int32), np.zeros(ptr[-1], np.int32)
    values = np.zeros(ptr[-1], np.float32)
    chan[slot], position[slot], values[slot] = c, kh * weight.shape[3] + kw, weight[o, c, kh, kw]
    return ptr, chan, position, values


def linear_by_output_row(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR (ptr, column, value) of a (O, C) weight."""
    o, c = np.nonzero(weight)
    ptr = np.concatenate([[0], np.cumsum(np.bincount(o, minlength=weight.shape[0]))]).astype(np.int64)
    return ptr, c.astype(np.int32), weight[o, c].astype(np.float32)
