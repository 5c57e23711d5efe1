"""Pattern + connectivity convolution, PatDNN style: FKW storage and a kernel that runs a whole pattern group
with one inner loop.

FKW (filter-kernel-weight) storage of a (O, C, 3, 3) weight whose every kernel has at most 4 non-zeros:
- `reorder`: filters sorted by their number of kept kernels (filter kernel reorder, FKR), so threads get
  balanced work;
- `offset`: where each reordered filter's kernels start;
- `index`: the input channel of every kept kernel, kernels grouped by pattern inside each filter;
- `stride`: per filter, how many kernels each pattern has (the pattern of a kernel is implied by its group);
- `weights`: the 4 values of every kernel, in its pattern's position order;
- `patterns`: the layer's patterns, 4 row-major positions each.

A kernel adds w0*x[p + d0] + w1*x[p + d1] + w2*x[p + d2] + w3*x[p + d3] to a run of output positions p (same
channel-major flat layout as sparse_kernels), so one accumulator load and store serves 4 multiply-adds, and
the pattern's offsets d0..d3 are fixed for a whole group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from slimkit.runtime.sparse_kernels import unflatten


@dataclass
class FKW:
    reorder: np.ndarray  # (O,) original filter of each stored filter
    offset: np.ndarray  # (O + 1,) start of each stored filter's kernels
    index: np.ndarray  # (kernels,) input channel of each kernel
    stride: np.ndarray  # (O, patterns) kernels per pattern, per stored filter
    weights: np.ndarray  # (kernels, 4)
    patterns: np.ndarray  # (patterns, 4) row-major positions in the 3x3 kernel
    shape: tuple[int, int, int, int]


def kernel_supports(weight: np.ndarray) -> np.ndarray:
    """Each kernel's 4 positions: its non-zeros in row-major order, padded with the lowest unused positions
    (weight 0) when it has fewer than 4. Raises if a kernel has more than 4 non-zeros."""
    flat = weight.reshape(-1, 9) != 0
    if (flat.sum(1) > 4).any():
        raise ValueError("a kernel has more than 4 non-zero weights: not a pattern-pruned layer")
    order = np.argsort(~flat, axis=1, kind="stable")[:, :4]  # non-zeros first, then the lowest free positions
    return np.sort(order, axis=1)


def fkw_encode(weight: np.ndarray) -> FKW:
    out_c, channels = weight.shape[:2]
    kernels = weight.reshape(out_c, channels, 9)
    alive = (kernels != 0).any(-1)
    supports = kernel_supports(weight).reshape(out_c, channels, 4)
    patterns, pattern_of = np.unique(supports[alive], axis=0, return_inverse=True)
    pattern_id = np.full((out_c, channels), -1)
    pattern_id[alive] = pattern_of.reshape(-1)
    reorder = np.argsort(-alive.sum(1), kind="stable")
    offset, index, weights = [0], [], []
    stride = np.zeros((out_c, len(patterns)), dtype=np.int32)
    for slot, o in enumerate(reorder):
        for p in range(len(patterns)):
            chans = np.nonzero(pattern_id[o] == p)[0]
            stride[slot, p] = len(chans)
            index.extend(chans.tolist())
            weights.extend(kernels[o, c, patterns[p]] for c in chans)
        offset.append(len(index))
    return FKW(reorder.astype(np.int32), np.asarray(offset, dtype=np.int64), np.asarray(index, dtype=np.int32),
               stride, np.asarray(weights, dtype=np.float32).reshape(-1, 4), patterns.astype(np.int32),
               tuple(weight.shape))


def fkw_decode(fkw: FKW) -> np.ndarray:
    """The dense (O, C, 3, 3) weight an FKW encodes."""
    out_c, channels = fkw.shape[:2]
    dense = np.zeros((out_c, channels, 9), dtype=np.float32)
    for slot, o in enumerate(fkw.reorder):
        k = fkw.offset[slot]
        for p, count in enumerate(fkw.stride[slot]):
            for _ in range(count):
                dense[o, fkw.index[k], fkw.patterns[p]] = fkw.weights[k]
                k += 1
    return dense.reshape(fkw.shape)


@njit(cache=True, parallel=True, fastmath=True)
def pattern_conv(planes: np.ndarray, reorder: np.ndarray, offset: np.ndarray, index: np.ndarray,
                 stride: np.ndarray, weights: np.ndarray, patterns: np.ndarray, bias: np.ndarray, batch: int,
                 hp: int, wp: int, out_h: int, out_w: int, segment: int) -> np.ndarray:
    """Stride-1 3x3 pattern conv of channel-major padded planes (C, B*Hp*Wp) -> (B, O, out_h, out_w)."""
    out_c = bias.shape[0]
    plane = hp * wp
    span = (batch - 1) * plane + (out_h - 1) * wp + out_w
    shifts = (patterns // 3) * wp + patterns % 3
    segments = (span + segment - 1) // segment
    flat = np.empty((out_c, segments * segment), dtype=np.float32)
    for s in prange(segments):
        start = s * segment
        length = min(segment, span - start)
        for slot in range(out_c):
            o = reorder[slot]
            acc = flat[o, start: start + length]
            acc[:] = bias[o]
            k = offset[slot]
            for p in range(stride.shape[1]):
                d0, d1, d2, d3 = shifts[p, 0] + start, shifts[p, 1] + start, shifts[p, 2] + start, shifts[p, 3] + start
                for _ in range(stride[slot, p]):
                    line = planes[index[k]]
                    x0, x1 = line[d0: d0 + length], line[d1: d1 + length]
                    x2, x3 = line[d2: d2 + length], line[d3: d3 + length]
                    w0, w1, w2, w3 = weights[k, 0], weights[k, 1], weights[k, 2], weights[k, 3]
                    for i in range(length):
                        acc[i] += w0 * x0[i] + w1 * x1[i] + w2 * x2[i] + w3 * x3[i]
                    k += 1
    return unflatten(flat, batch, hp, wp, out_h, out_w)
