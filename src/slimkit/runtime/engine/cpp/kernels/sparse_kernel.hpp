// Sparse convolution that multiplies only the non-zero weights, direct (no im2col), as
// slimkit/runtime/eager/sparse_kernels.py: the zero-padded input is laid out channel-major over all images,
// (C, B * Hp * Wp), so output position p of a stride-1 conv reads input position p + kh * Wp + kw and every
// non-zero weight is one multiply-add over a contiguous run of positions, which GCC vectorises. Four
// non-zeros share one pass over the accumulator. A strided conv is first turned into a stride-1 conv over
// the input's stride x stride phases (space to depth), so it computes no discarded outputs.
// Compiled once per instruction set, like binary_kernel.hpp.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernel_shapes.hpp"

namespace slimkit {
namespace SLIMKIT_ISA {

// acc[o - o_begin][i] = shift[o] + sum over o's non-zeros of value * planes[channel][start + offset + i],
// for i < length; acc rows are `row_stride` floats apart.
void sparse_segment(const float* planes, size_t plane_stride, const SparseWeights& w, int o_begin, int o_end,
                    size_t start, int length, int row_stride, float* acc) {
    for (int o = o_begin; o < o_end; ++o) {
        float* __restrict row = acc + static_cast<size_t>(o - o_begin) * row_stride;
        const float shift = w.shift[o];
        for (int i = 0; i < length; ++i) row[i] = shift;
        for (int64_t e = w.ptr[o]; e < w.ptr[o + 1]; e += 4) {  // entries are padded to a multiple of 4
            const float* __restrict a = planes + static_cast<size_t>(w.channel[e]) * plane_stride + start + w.offset[e];
            const float* __restrict b = planes + static_cast<size_t>(w.channel[e + 1]) * plane_stride + start + w.offset[e + 1];
            const float* __restrict c = planes + static_cast<size_t>(w.channel[e + 2]) * plane_stride + start + w.offset[e + 2];
            const float* __restrict d = planes + static_cast<size_t>(w.channel[e + 3]) * plane_stride + start + w.offset[e + 3];
            const float va = w.value[e], vb = w.value[e + 1], vc = w.value[e + 2], vd = w.value[e + 3];
            for (int i = 0; i < length; ++i) row[i] += va * a[i] + vb * b[i] + vc * c[i] + vd * d[i];
        }
    }
}

// Rows o_begin..o_end of yt = W x^T + shift for a CSR W, with x^T batch-minor (K, N): each non-zero is one
// multiply-add over N contiguous values, which GCC vectorises (N >= 8); yt rows are N floats.
void sparse_rows(const float* xt, int batch, const SparseWeights& w, int o_begin, int o_end, float* yt) {
    for (int o = o_begin; o < o_end; ++o) {
        float* __restrict row = yt + static_cast<size_t>(o) * batch;
        const float shift = w.shift[o];
        for (int n = 0; n < batch; ++n) row[n] = shift;
        for (int64_t e = w.ptr[o]; e < w.ptr[o + 1]; ++e) {
            const float* __restrict line = xt + static_cast<size_t>(w.channel[e]) * batch;
            const float v = w.value[e];
            for (int n = 0; n < batch; ++n) row[n] += v * line[n];
        }
    }
}

// One row of y = x W^T + shift for a single input row (batch 1): a gathered dot product per output.
void sparse_dots(const float* x, const SparseWeights& w, int o_begin, int o_end, float* y) {
    for (int o = o_begin; o < o_end; ++o) {
        float total = w.shift[o];
        for (int64_t e = w.ptr[o]; e < w.ptr[o + 1]; ++e) total += w.value[e] * x[w.channel[e]];
        y[o] = total;
    }
}

}  // namespace SLIMKIT_ISA
}  // namespace slimkit
