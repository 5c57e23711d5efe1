"""Bit-packed binary convolution, direct (no float im2col), exact.

Activations are packed along channels into two bit planes: N (the value is non-zero) and P (it is
positive). sign(0) = 0 in the training graph, and padding is 0 too, so neither fits one +-1 bit; with the
N plane both contribute nothing, which is the padding correction. For +-1 weights with positive-bit plane
Wp, one window gives

    sum = popcount(N) - 2 * popcount(N & (P xor Wp))

popcount(N) is shared by every output channel. Bits are laid out per kernel row: the KW pixels a window
row covers are concatenated, C bits each, into ceil(KW * C / 64) words, so 16- and 32-channel layers fill
their words instead of wasting most of one word per pixel. Planes are stored [image, row, word, column]
and weights [kh, word, out], so either loop can be the innermost, contiguous one that LLVM vectorises:
over output columns when a layer has few channels and wide rows (ResNet-20's first stages), over output
channels when it has many channels and narrow rows (VGG-small, late stages).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from slimkit.runtime.eager.popcount import popcount

HALF = np.uint64(32)


def row_words(kernel_w: int, channels: int) -> int:
    """64-bit words one kernel row of `kernel_w` pixels x `channels` bits takes."""
    return (kernel_w * channels + 63) // 64


@njit(cache=True)
def _sign_halves(plane: np.ndarray, half_n: np.ndarray, half_p: np.ndarray) -> None:
    """Each pixel's non-zero and positive bits, channel c at bit c % 32 of 32-bit half word c / 32: every
    channel plane read contiguously (a float compare widens to 32-bit lanes cheaply)."""
    channels, area = plane.shape
    for c in range(channels):
        half, shift = c >> 5, np.uint32(c & 31)
        for i in range(area):  # branch-free, so LLVM vectorises it
            value = plane[c, i]
            half_n[half, i] |= np.uint32(value != 0) << shift
            half_p[half, i] |= np.uint32(value > 0) << shift


@njit(cache=True)
def _pixel_words(half: np.ndarray, width: int, pad: int, pixels: np.ndarray) -> None:
    """Pairs of half words joined into 64-bit per-pixel words, rows zero-padded by `pad` columns."""
    height, pixel_words = pixels.shape[0], pixels.shape[1]
    for h in range(height):
        for j in range(pixel_words):
            for w in range(width):
                i = h * width + w
                pixels[h, j, pad + w] = np.uint64(half[2 * j, i]) | (np.uint64(half[2 * j + 1, i]) << HALF)


@njit(cache=True)
def _window_words(pixels: np.ndarray, channels: int, kernel_w: int, stride: int, out: np.ndarray) -> None:
    """Window words [h, word, ow] from per-pixel words: pixel ow*stride + kw's channels at bit kw*channels + c."""
    height, pixel_words = pixels.shape[0], pixels.shape[1]
    words, out_w = out.shape[1], out.shape[2]
    for h in range(height):
        for kw in range(kernel_w):
            for j in range(pixel_words):
                offset = kw * channels + j * 64
                word, shift = offset >> 6, np.uint64(offset & 63)
                if stride == 1:  # a unit stride LLVM can see vectorises (0.45 -> 0.32 ms, 16 ch, b64)
                    for ow in range(out_w):
                        out[h, word, ow] |= pixels[h, j, ow + kw] << shift
                else:
                    for ow in range(out_w):
                        out[h, word, ow] |= pixels[h, j, ow * stride + kw] << shift
                if shift != 0 and word + 1 < words:
                    back = np.uint64(64) - shift
                    for ow in range(out_w):
                        out[h, word + 1, ow] |= pixels[h, j, ow * stride + kw] >> back


@njit(cache=True, parallel=True)
def pack_rows(x: np.ndarray, kernel_w: int, stride: int, pad: int, out_w: int,
              threads: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, P) planes of shape (B, H, words, out_w): for input row h and output column ow, the bits of the
    pixels ow*stride - pad + kw (kw < kernel_w), channel-minor; columns outside the image stay 0.

    One image at a time: each channel plane is read into 32-bit half words, halves are joined into per-pixel
    words of zero-padded rows, and the window words are built from those by shifts.
    """
    batch, channels, height, width = x.shape
    area = height * width
    planes = x.reshape(batch, channels, area)
    words = (kernel_w * channels + 63) // 64
    half_words = (channels + 31) // 32
    pixel_words = (channels + 63) // 64
    padded = width + 2 * pad + kernel_w
    nonzero = np.zeros((batch, height, words, out_w), dtype=np.uint64)
    positive = np.zeros((batch, height, words, out_w), dtype=np.uint64)
    chunks = max(1, min(batch, threads))
    for chunk in prange(chunks):
        half_n = np.zeros((half_words + 1, area), dtype=np.uint32)  # a spare zero row for odd half counts
        half_p = np.zeros((half_words + 1, area), dtype=np.uint32)
        pix_n = np.zeros((height, pixel_words, padded), dtype=np.uint64)  # padding columns stay 0
        pix_p = np.zeros((height, pixel_words, padded), dtype=np.uint64)
        for b in range(chunk * batch // chunks, (chunk + 1) * batch // chunks):
            half_n[:half_words] = 0
            half_p[:half_words] = 0
            _sign_halves(planes[b], half_n, half_p)
            _pixel_words(half_n, width, pad, pix_n)
            _pixel_words(half_p, width, pad, pix_p)
            _window_words(pix_n, channels, kernel_w, stride, nonzero[b])
            _window_words(pix_p, channels, kernel_w, stride, positive[b])
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


def binary_conv(nonzero: np.ndarray, positive: np.ndarray, weight_bits: np.ndarray, scale: np.ndarray,
                bias: np.ndarray, stride: int, pad: int, out_h: int, threads: int) -> np.ndarray:
    """y[b, o, oh, ow] = scale[o] * sum + bias[o], sum the +-1/0 dot product of one window (see module),
    vectorised over output columns where rows are at least half as wide as the layer has output channels
    (measured on ResNet-20 and VGG-small shapes: each order wins clearly on its side of that line)."""
    columns_inner = 2 * nonzero.shape[3] >= weight_bits.shape[2]
    return binary_conv_in_order(nonzero, positive, weight_bits, scale, bias, stride, pad, out_h, threads,
                                columns_inner)


@njit(cache=True, parallel=True)
def binary_conv_in_order(nonzero: np.ndarray, positive: np.ndarray, weight_bits: np.ndarray, scale: np.ndarray,
                         bias: np.ndarray, stride: int, pad: int, out_h: int, threads: int,
                         columns_inner: bool) -> np.ndarray:
    """binary_conv with the given innermost loop; output rows are split into one chunk per thread."""
    batch, out_w = nonzero.shape[0], nonzero.shape[3]
    out_c = weight_bits.shape[2]
    y = np.empty((batch, out_c, out_h, out_w), dtype=np.float32)
    rows = batch * out_h
    chunks = max(1, min(rows, threads))
    for chunk in prange(chunks):
        acc = np.empty((out_c, out_w), dtype=np.uint64)
        ones = np.empty(out_w, dtype=np.uint64)
        pixel = np.empty(out_c, dtype=np.int32)  # _row_over_channels' per-pixel sums (int32 adds vectorise best)
        for row in range(chunk * rows // chunks, (chunk + 1) * rows // chunks):
            b, oh = row // out_h, row % out_h
            if columns_inner:
                _row_over_columns(nonzero, positive, weight_bits, stride, pad, b, oh, acc, ones)
            else:
                _row_over_channels(nonzero, positive, weight_bits, stride, pad, b, oh, acc, ones, pixel)
            for o in range(out_c):
                for ow in range(out_w):
                    y[b, o, oh, ow] = np.float32(np.int64(ones[ow]) - 2 * np.int64(acc[o, ow])) * scale[o] + bias[o]
    return y


@njit(cache=True)
def _row_over_columns(nonzero: np.ndarray, positive: np.ndarray, weight_bits: np.ndarray, stride: int, pad: int,
                      b: int, oh: int, acc: np.ndarray, ones: np.ndarray) -> None:
    """One output row's popcount sums into acc (out_c, out_w) and ones (out_w), columns innermost."""
    height, words, out_w = nonzero.shape[1:]
    kernel_h, _, out_c = weight_bits.shape
    acc[:] = 0
    ones[:] = 0
    for kh in range(kernel_h):
        ih = oh * stride - pad + kh
        if ih < 0 or ih >= height:
            continue
        for j in range(words):
            for ow in range(out_w):
                ones[ow] += popcount(nonzero[b, ih, j, ow])
            for o in range(out_c):
                w = weight_bits[kh, j, o]
                for ow in range(out_w):
                    acc[o, ow] += popcount(nonzero[b, ih, j, ow] & (positive[b, ih, j, ow] ^ w))


@njit(cache=True)
def _row_over_channels(nonzero: np.ndarray, positive: np.ndarray, weight_bits: np.ndarray, stride: int, pad: int,
                       b: int, oh: int, acc: np.ndarray, ones: np.ndarray, pixel: np.ndarray) -> None:
    """As _row_over_columns, output channels innermost: one pixel's sums at a time, in `pixel`."""
    height, words, out_w = nonzero.shape[1:]
    kernel_h, _, out_c = weight_bits.shape
    for ow in range(out_w):
        pixel[:] = 0
        count = np.uint64(0)
        for kh in range(kernel_h):
            ih = oh * stride - pad + kh
            if ih < 0 or ih >= height:
                continue
            for j in range(words):
                n = nonzero[b, ih, j, ow]
                if n == 0:
                    continue
                p = positive[b, ih, j, ow]
                count += popcount(n)
                w = weight_bits[kh, j]
                for o in range(out_c):
                    pixel[o] += np.int32(popcount(n & (p ^ w[o])))
        ones[ow] = count
        acc[:, ow] = pixel
