"""Bit-packed binary convolution, direct (no float im2col), exact.

Activations are packed along channels into two bit planes: N (the value is non-zero) and P (it is
positive). sign(0) = 0 in the training graph, and padding is 0 too, so neither fits one +-1 bit; with the
N plane both contribute nothing, which is the padding correction. For +-1 weights with positive-bit plane
Wp, one window gives

    sum = popcount(N) - 2 * popcount(N & (P xor Wp))

popcount(N) is shared by every output channel. Bits are laid out per kernel row: the KW pixels a window
row covers are concatenated, C bits each, into ceil(KW * C / 64) words, so 16- and 32-channel layers fill
their words instead of wasting most of one word per pixel. The inner loop runs over output channels with
the weights stored [kh, word, out], which LLVM vectorises.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from slimkit.runtime.popcount import popcount

ONE = np.uint64(1)


def row_words(kernel_w: int, channels: int) -> int:
    """64-bit words one kernel row of `kernel_w` pixels x `channels` bits takes."""
    return (kernel_w * channels + 63) // 64


@njit(cache=True, parallel=True)
def pack_rows(x: np.ndarray, kernel_w: int, stride: int, pad: int, out_w: int,
              threads: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, P) planes of shape (B, H, out_w, words): for input row h and output column ow, the bits of the
    pixels ow*stride - pad + kw (kw < kernel_w), channel-minor; columns outside the image stay 0.

    Each image row is first packed per pixel (reading x contiguously), then the window words are built
    from whole pixel words by shifts.
    """
    batch, channels, height, width = x.shape
    words = (kernel_w * channels + 63) // 64
    pixel_words = (channels + 63) // 64
    nonzero = np.zeros((batch, height, out_w, words), dtype=np.uint64)
    positive = np.zeros((batch, height, out_w, words), dtype=np.uint64)
    rows = batch * height
    chunks = max(1, min(rows, threads))
    for chunk in prange(chunks):
        pix_n = np.empty((pixel_words, width), dtype=np.uint64)  # word-major: the w loop is contiguous
        pix_p = np.empty((pixel_words, width), dtype=np.uint64)
        for row in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            b, h = row // height, row % height
            pix_n[:] = 0
            pix_p[:] = 0
            for c in range(channels):
                line, shift = x[b, c, h], np.uint64(c & 63)
                words_n, words_p = pix_n[c >> 6], pix_p[c >> 6]
                for w in range(width):  # branch-free, so LLVM vectorises it
                    words_n[w] |= np.uint64(line[w] != 0) << shift
                    words_p[w] |= np.uint64(line[w] > 0) << shift
            for ow in range(out_w):
                for kw in range(kernel_w):
                    iw = ow * stride - pad + kw
                    if iw < 0 or iw >= width:
                        continue
                    for j in range(pixel_words):
                        offset = kw * channels + j * 64
                        word, shift = offset >> 6, np.uint64(offset & 63)
                        nonzero[b, h, ow, word] |= pix_n[j, iw] << shift
                        positive[b, h, ow, word] |= pix_p[j, iw] << shift
                        if shift != 0 and word + 1 < words:
                            nonzero[b, h, ow, word + 1] |= pix_n[j, iw] >> (np.uint64(64) - shift)
                            positive[b, h, ow, word + 1] |= pix_p[j, iw] >> (np.uint64(64) - shift)
    return nonzero, positive


def pack_weights(signs: np.ndarray) -> np.ndarray:
    """Positive-bit plane of +-1 weights (out, C, KH, KW) laid out [kh, word, out] like the activations."""
    out, channels, kernel_h, kernel_w = signs.shape
    words = row_words(kernel_w, channels)
    bits = np.zeros((kernel_h, words * 64, out), dtype=np.uint64)
    positive = (signs > 0).transpose(2, 3, 1, 0).reshape(kernel_h, kernel_w * channels, out)  # kw-major, c-minor
    bits[:, : kernel_w * channels] = positive
    shifts = np.arange(64, dtype=np.uint64)[None, None, :, None]
    return (bits.reshape(kernel_h, words, 64, out) << shifts).sum(axis=2, dtype=np.uint64)


@njit(cache=True, parallel=True)
def binary_conv(nonzero: np.ndarray, positive: np.ndarray, weight_bits: np.ndarray, scale: np.ndarray,
                bias: np.ndarray, stride: int, pad: int, out_h: int, threads: int) -> np.ndarray:
    """y[b, o, oh, ow] = scale[o] * sum + bias[o], sum the +-1/0 dot product of one window (see module).
    Output rows are split into one chunk per thread, each with one accumulator."""
    batch, height, out_w, words = nonzero.shape
    kernel_h, _, out_c = weight_bits.shape
    y = np.empty((batch, out_c, out_h, out_w), dtype=np.float32)
    rows = batch * out_h
    chunks = max(1, min(rows, threads))
    for chunk in prange(chunks):
        acc = np.empty(out_c, dtype=np.int32)
        line = np.empty((out_c, out_w), dtype=np.float32)  # one output row, written out contiguously
        for row in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            b, oh = row // out_h, row % out_h
            for ow in range(out_w):
                acc[:] = 0
                ones = 0
                for kh in range(kernel_h):
                    ih = oh * stride - pad + kh
                    if ih < 0 or ih >= height:
                        continue
                    for j in range(words):
                        n = nonzero[b, ih, ow, j]
                        if n == 0:
                            continue
                        p = positive[b, ih, ow, j]
                        ones += popcount(n)
                        w = weight_bits[kh, j]
                        for o in range(out_c):
                            acc[o] += np.int32(popcount(n & (p ^ w[o])))
                for o in range(out_c):
                    line[o, ow] = np.float32(ones - 2 * acc[o]) * scale[o] + bias[o]
            for o in range(out_c):
                y[b, o, oh, :] = line[o]
    return y
