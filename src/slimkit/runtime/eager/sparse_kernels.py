"""Sparse convolution and linear kernels that skip zero weights, direct (no im2col).

The conv takes its zero-padded input channel-major, one flat run per channel over all images:
(C, B * Hp * Wp). Output position p = b*Hp*Wp + oh*Wp + ow of a stride-1 conv reads input position
p + kh*Wp + kw, so every non-zero weight is one multiply-add over a contiguous run of positions, which LLVM
vectorises; four non-zeros share one pass over the accumulator, which halves its loads and stores. Runs
are cut into segments so every channel's slice of a segment stays in cache; positions that fall in the
padding are computed and dropped. Pattern-pruned layers (4 of 9 weights, whole kernels
removed) run through the same loop with their 8x fewer weights. The linear layer is a CSR product over a
batch-minor input.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from slimkit.runtime.layouts import GROUP

CACHE_FLOATS = 64 * 1024  # inputs one segment may touch (256 KiB: half of an L2)


def segment_length(channels: int) -> int:
    """Output positions per work item, so that every channel's slice of a segment stays in L2."""
    return int(min(1024, max(64, CACHE_FLOATS // max(channels, 1))))


@njit(cache=True, parallel=True)
def channel_major(x: np.ndarray, pad: int) -> np.ndarray:
    """(B, C, H, W) -> zero-padded planes (C, B * Hp * Wp), in one parallel pass."""
    batch, channels, height, width = x.shape
    hp, wp = height + 2 * pad, width + 2 * pad
    planes = np.zeros((channels, batch * hp * wp), dtype=np.float32)
    for c in prange(channels):
        for b in range(batch):
            for h in range(height):
                start = b * hp * wp + (h + pad) * wp + pad
                planes[c, start: start + width] = x[b, c, h]
    return planes


@njit(cache=True, parallel=True, fastmath=True)
def sparse_conv(planes: np.ndarray, ptr: np.ndarray, chan: np.ndarray, position: np.ndarray, values: np.ndarray,
                bias: np.ndarray, kernel_w: int, batch: int, hp: int, wp: int, out_h: int, out_w: int,
                segment: int) -> np.ndarray:
    """Stride-1 conv of channel-major padded planes (C, B*Hp*Wp) -> (B, O, out_h, out_w)."""
    out_c = bias.shape[0]
    plane = hp * wp
    reach = ((out_h - 1) * wp + out_w)  # positions of one image that hold outputs
    span = (batch - 1) * plane + reach
    offsets = (position // kernel_w) * wp + position % kernel_w
    segments = (span + segment - 1) // segment
    flat = np.empty((out_c, segments * segment), dtype=np.float32)
    for s in prange(segments):
        start = s * segment
        length = min(segment, span - start)
        for o in range(out_c):
            acc = flat[o, start: start + length]
            acc[:] = bias[o]
            for e in range(ptr[o], ptr[o + 1], GROUP):  # GROUP = 4 multiply-adds per pass over acc
                a = planes[chan[e], start + offsets[e]: start + offsets[e] + length]
                b = planes[chan[e + 1], start + offsets[e + 1]: start + offsets[e + 1] + length]
                c = planes[chan[e + 2], start + offsets[e + 2]: start + offsets[e + 2] + length]
                d = planes[chan[e + 3], start + offsets[e + 3]: start + offsets[e + 3] + length]
                va, vb, vc, vd = values[e], values[e + 1], values[e + 2], values[e + 3]
                for i in range(length):
                    acc[i] += va * a[i] + vb * b[i] + vc * c[i] + vd * d[i]
    return unflatten(flat, batch, hp, wp, out_h, out_w)


@njit(cache=True, parallel=True)
def unflatten(flat: np.ndarray, batch: int, hp: int, wp: int, out_h: int, out_w: int) -> np.ndarray:
    """(O, positions) on the padded grid -> (B, O, out_h, out_w), dropping the positions in the padding."""
    out_c = flat.shape[0]
    y = np.empty((batch, out_c, out_h, out_w), dtype=np.float32)
    for o in prange(out_c):
        for b in range(batch):
            for oh in range(out_h):
                base = b * hp * wp + oh * wp
                y[b, o, oh, :] = flat[o, base: base + out_w]
    return y


@njit(cache=True, parallel=True, fastmath=True)
def sparse_linear(xt: np.ndarray, ptr: np.ndarray, cols: np.ndarray, values: np.ndarray, bias: np.ndarray,
                  threads: int) -> np.ndarray:
    """y^T (O, B) = W x^T + bias, with x^T (C, B) batch-minor so each non-zero is one multiply-add row."""
    batch = xt.shape[1]
    out_c = bias.shape[0]
    yt = np.empty((out_c, batch), dtype=np.float32)
    chunks = max(1, min(out_c, threads))
    for chunk in prange(chunks):
        for o in range(chunk * out_c // chunks, (chunk + 1) * out_c // chunks):
            if batch == 1:  # one dot product, summed in a register (2x faster than the row loop below)
                total = bias[o]
                for e in range(ptr[o], ptr[o + 1]):
                    total += values[e] * xt[cols[e], 0]
                yt[o, 0] = total
                continue
            target = yt[o]
            target[:] = bias[o]
            for e in range(ptr[o], ptr[o + 1]):
                line, v = xt[cols[e]], values[e]
                for b in range(batch):
                    target[b] += v * line[b]
    return yt
