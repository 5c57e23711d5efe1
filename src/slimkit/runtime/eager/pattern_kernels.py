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

Grouped layers (pruned with `filter_group` > 1, so groups of filters keep the same kernels and patterns)
run as dense GEMMs over gathered inputs instead: a group's R rows are the input runs x[c, p + tap] of its
kept (channel, tap) pairs, and its filters' R weights form a dense (filters x R) block. The kernel tiles
that product 4 filters x 4 rows at a time, so every input value it loads feeds 16 multiply-adds (the
FKW loop above gets 4 per load).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from slimkit.runtime.eager.sparse_kernels import unflatten


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
    offset, index, weights = [0], list[int](), list[np.ndarray]()
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


TILE = 4  # filters and rows per register tile of grouped_conv; its loop body is written for exactly 4
MIN_GROUP = 4  # filters a group needs on average before the GEMM path is used


@dataclass
class FilterGroups:
    """A pattern layer whose filters fall into groups with identical kernel supports.

    `slots` lists the filters group by group, each group padded to a multiple of TILE with dummy slots
    (value O: their outputs go to a scratch row); `group_ptr` and `row_ptr` delimit each group's slots and
    rows; a row is an input channel `chan` and a 3x3 position `tap`; `weights` (slots, max rows) holds each
    slot's weights in its group's row order."""

    out_channels: int
    slots: np.ndarray
    group_ptr: np.ndarray
    row_ptr: np.ndarray
    chan: np.ndarray
    tap: np.ndarray
    weights: np.ndarray

    @property
    def mean_filters(self) -> float:
        """Filters per group (dummy slots not counted)."""
        return self.out_channels / max(1, len(self.group_ptr) - 1)


def group_filters(weight: np.ndarray) -> FilterGroups:
    """Group the filters of a (O, C, 3, 3) pattern-pruned weight by identical kernel supports (the 4
    positions of every kept kernel, padded as in kernel_supports)."""
    out_c, channels = weight.shape[:2]
    kernels = weight.reshape(out_c, channels, 9)
    alive = (kernels != 0).any(-1)
    support = np.zeros((out_c, channels, 9), dtype=bool)
    positions = kernel_supports(weight).reshape(out_c, channels, 4)
    o, c = np.nonzero(alive)
    support[o[:, None], c[:, None], positions[o, c]] = True
    layouts, group_of = np.unique(support.reshape(out_c, -1), axis=0, return_inverse=True)
    slots, group_ptr, row_ptr, rows = [], [0], [0], []
    for g, layout in enumerate(layouts):
        members = np.nonzero(group_of.reshape(-1) == g)[0].tolist()
        slots += members + [out_c] * (-len(members) % TILE)
        group_ptr.append(len(slots))
        kept = np.nonzero(layout)[0]
        rows.append(kept)
        row_ptr.append(row_ptr[-1] + len(kept))
    weights = np.zeros((len(slots), max(1, max(len(r) for r in rows))), dtype=np.float32)
    flat = kernels.reshape(out_c, -1)
    for g, kept in enumerate(rows):
        for slot in range(group_ptr[g], group_ptr[g + 1]):
            if slots[slot] < out_c:
                weights[slot, : len(kept)] = flat[slots[slot], kept]
    kept = np.concatenate(rows).astype(np.int32)
    return FilterGroups(out_c, np.asarray(slots, dtype=np.int32), np.asarray(group_ptr, dtype=np.int64),
                        np.asarray(row_ptr, dtype=np.int64), kept // 9, kept % 9, weights)


@njit(cache=True, parallel=True, fastmath=True)
def grouped_conv(planes: np.ndarray, slots: np.ndarray, group_ptr: np.ndarray, row_ptr: np.ndarray,
                 chan: np.ndarray, tap: np.ndarray, weights: np.ndarray, bias: np.ndarray, batch: int, hp: int,
                 wp: int, out_h: int, out_w: int, segment: int) -> np.ndarray:
    """Stride-1 3x3 conv of a grouped layer (FilterGroups) on channel-major padded planes (C, B*Hp*Wp) ->
    (B, O, out_h, out_w): per segment of output positions, each group's (filters x rows) product with the
    gathered input runs, 4 x 4 at a time (every group's rows come in whole kernels of 4)."""
    out_c = bias.shape[0]
    span = (batch - 1) * hp * wp + (out_h - 1) * wp + out_w
    offsets = (tap // 3) * wp + tap % 3
    segments = (span + segment - 1) // segment
    flat = np.empty((out_c + 1, segments * segment), dtype=np.float32)  # the last row takes dummy slots
    padded_bias = np.zeros(out_c + 1, dtype=np.float32)
    padded_bias[:out_c] = bias
    for s in prange(segments):
        start = s * segment
        length = min(segment, span - start)
        for g in range(group_ptr.shape[0] - 1):
            for f in range(group_ptr[g], group_ptr[g + 1], TILE):
                o0, o1, o2, o3 = slots[f], slots[f + 1], slots[f + 2], slots[f + 3]
                a0, a1 = flat[o0, start: start + length], flat[o1, start: start + length]
                a2, a3 = flat[o2, start: start + length], flat[o3, start: start + length]
                a0[:] = padded_bias[o0]
                a1[:] = padded_bias[o1]
                a2[:] = padded_bias[o2]
                a3[:] = padded_bias[o3]
                for r in range(row_ptr[g], row_ptr[g + 1], TILE):
                    d0, d1 = start + offsets[r], start + offsets[r + 1]
                    d2, d3 = start + offsets[r + 2], start + offsets[r + 3]
                    x0, x1 = planes[chan[r], d0: d0 + length], planes[chan[r + 1], d1: d1 + length]
                    x2, x3 = planes[chan[r + 2], d2: d2 + length], planes[chan[r + 3], d3: d3 + length]
                    k = r - row_ptr[g]
                    # scalars, so LLVM keeps the 16 weights in registers across the loop
                    f1, f2, f3 = f + 1, f + 2, f + 3
                    w00, w01, w02, w03 = weights[f, k], weights[f, k + 1], weights[f, k + 2], weights[f, k + 3]
                    w10, w11, w12, w13 = weights[f1, k], weights[f1, k + 1], weights[f1, k + 2], weights[f1, k + 3]
                    w20, w21, w22, w23 = weights[f2, k], weights[f2, k + 1], weights[f2, k + 2], weights[f2, k + 3]
                    w30, w31, w32, w33 = weights[f3, k], weights[f3, k + 1], weights[f3, k + 2], weights[f3, k + 3]
                    for i in range(length):
                        v0, v1, v2, v3 = x0[i], x1[i], x2[i], x3[i]
                        a0[i] += w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3
                        a1[i] += w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3
                        a2[i] += w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3
                        a3[i] += w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3
    return unflatten(flat[:out_c], batch, hp, wp, out_h, out_w)
