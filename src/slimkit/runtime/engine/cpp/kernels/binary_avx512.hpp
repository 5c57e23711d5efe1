// The AVX-512 (VPOPCNTDQ) build's binary convolution row, included by binary_kernel.hpp in that build only.
// Two passes per output row: the window sums of blocks of output channels x columns, counted in registers with
// hand-written vpopcntq (GCC's own vectorisation of the plain loops ran 2.3-2.6x slower than the AVX2 build on
// Zen 4); then one pass over the sums that applies the fused epilogue 16 columns at a time and, where the next
// binary layer reads bits, packs the outputs' sign bits while they are in registers (no float re-read).
// Every window uses both planes, popcount(N) - 2 popcount(N & (P xor W)), which is exact for either sign(0).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <algorithm>

#include "binary_pack.hpp"
#include "kernel_shapes.hpp"

namespace slimkit {
namespace SLIMKIT_ISA {

// Lanes 64-bit words in one register: 4 (256-bit) or 8 (512-bit). Which width wins is the CPU's business (Zen 4
// splits 512-bit operations in two): the kernel tuner times both. Loads are masked to the row's columns.
template <int Lanes>
struct Words;

template <>
struct Words<4> {
    using V = __m256i;
    static V load(const uint64_t* at, __mmask8 lanes) { return _mm256_maskz_loadu_epi64(lanes, at); }
    static V broadcast(uint64_t w) { return _mm256_set1_epi64x(static_cast<long long>(w)); }
    static V zero() { return _mm256_setzero_si256(); }
    static V add_count(V total, V bits) { return _mm256_add_epi64(total, _mm256_popcnt_epi64(bits)); }
    static V masked_xor(V n, V p, V w) { return _mm256_ternarylogic_epi64(n, p, w, 0x60); }  // n & (p ^ w)
    static void store(uint32_t* at, __mmask8 lanes, V total) {
        _mm256_mask_cvtepi64_storeu_epi32(at, lanes, total);  // the sums fit 32 bits
    }
};

template <>
struct Words<8> {
    using V = __m512i;
    static V load(const uint64_t* at, __mmask8 lanes) { return _mm512_maskz_loadu_epi64(lanes, at); }
    static V broadcast(uint64_t w) { return _mm512_set1_epi64(static_cast<long long>(w)); }
    static V zero() { return _mm512_setzero_si512(); }
    static V add_count(V total, V bits) { return _mm512_add_epi64(total, _mm512_popcnt_epi64(bits)); }
    static V masked_xor(V n, V p, V w) { return _mm512_ternarylogic_epi64(n, p, w, 0x60); }
    static void store(uint32_t* at, __mmask8 lanes, V total) { _mm512_mask_cvtepi64_storeu_epi32(at, lanes, total); }
};

// The words of each step of one output row's windows: kernel rows inside the image x words per kernel row.
struct RowSteps {
    static constexpr int max_steps = 16 * 64;  // kernel rows x words per row; the op checks the bound
    const uint64_t* n_at[max_steps];
    const uint64_t* p_at[max_steps];
    const uint64_t* w_at[max_steps];
    int steps = 0;
};

// acc[o + i][first ..] = popcount(N & (P xor W)) over every step, for O output channels against V registers of
// Lanes columns from `first` (the last ones masked to the row's columns). Each step loads the columns' N and P
// words once for all O channels and broadcasts each channel's weight word; counts add up in 64-bit lanes.
template <int Lanes, int O, int V>
static inline void popcount_block(const RowSteps& r, int o, int first, int cols, uint32_t* acc) {
    using W = Words<Lanes>;
    __mmask8 lanes[V];
    for (int v = 0; v < V; ++v) {
        const int left = std::min(Lanes, cols - first - Lanes * v);
        lanes[v] = static_cast<__mmask8>((1u << left) - 1);
    }
    typename W::V total[O][V];
    for (int i = 0; i < O; ++i)
        for (int v = 0; v < V; ++v) total[i][v] = W::zero();
    for (int t = 0; t < r.steps; ++t) {
        typename W::V n[V], p[V];
        for (int v = 0; v < V; ++v) {
            n[v] = W::load(r.n_at[t] + first + Lanes * v, lanes[v]);
            p[v] = W::load(r.p_at[t] + first + Lanes * v, lanes[v]);
        }
        for (int i = 0; i < O; ++i) {
            const typename W::V w = W::broadcast(r.w_at[t][o + i]);
            for (int v = 0; v < V; ++v) total[i][v] = W::add_count(total[i][v], W::masked_xor(n[v], p[v], w));
        }
    }
    for (int i = 0; i < O; ++i)
        for (int v = 0; v < V; ++v)
            W::store(acc + static_cast<size_t>(o + i) * cols + first + Lanes * v, lanes[v], total[i][v]);
}

// Every output channel's sums for one row in blocks of O channels x V registers of columns (16 accumulators:
// 4 x 4, 8 x 2 or 16 x 1 registers, as wide as the row allows); channels past the last whole block of O go 4 at
// a time, columns past the last whole group one register at a time.
template <int Lanes, int O, int V>
static void popcount_rows(const RowSteps& r, const Shape& s, uint32_t* acc) {
    const int whole = s.outs / O * O;  // outs is a multiple of 4 (spare channels have zero weights)
    for (int first = 0; first < s.cols; first += Lanes * V) {
        const bool full = s.cols - first > Lanes * (V - 1);  // every register of the group holds columns
        for (int o = 0; o < s.outs; o += o < whole ? O : 4) {
            const bool big = o < whole;
            if (full) {
                if (big) popcount_block<Lanes, O, V>(r, o, first, s.cols, acc);
                else popcount_block<Lanes, 4, V>(r, o, first, s.cols, acc);
                continue;
            }
            for (int at = first; at < s.cols; at += Lanes) {
                if (big) popcount_block<Lanes, O, 1>(r, o, at, s.cols, acc);
                else popcount_block<Lanes, 4, 1>(r, o, at, s.cols, acc);
            }
        }
    }
}

// The sums of one output row: acc[o][ow] (row stride cols) = popcount(N & (P xor W)) over the window, with the
// blocking that fits the row's width in registers of the variant's width (0: 256-bit, 1: 512-bit).
static void popcount_sums(int variant, const RowSteps& r, const Shape& s, uint32_t* acc) {
    if (variant == 1) {
        if (s.cols > 24) popcount_rows<8, 4, 4>(r, s, acc);
        else if (s.cols > 8) popcount_rows<8, 8, 2>(r, s, acc);
        else popcount_rows<8, 16, 1>(r, s, acc);
    } else {
        if (s.cols > 12) popcount_rows<4, 4, 4>(r, s, acc);
        else if (s.cols > 4) popcount_rows<4, 8, 2>(r, s, acc);
        else popcount_rows<4, 16, 1>(r, s, acc);
    }
}

// ones[ow] = popcount(N) over ow's window: the non-zero inputs it reads.
static void window_ones(const RowSteps& r, int cols, int32_t* ones) {
    for (int first = 0; first < cols; first += 8) {
        const __mmask8 lanes = static_cast<__mmask8>((1u << std::min(8, cols - first)) - 1);
        __m512i total = _mm512_setzero_si512();
        for (int t = 0; t < r.steps; ++t)
            total = _mm512_add_epi64(total, _mm512_popcnt_epi64(_mm512_maskz_loadu_epi64(lanes, r.n_at[t] + first)));
        _mm512_mask_cvtepi64_storeu_epi32(ones + first, lanes, total);
    }
}

// Output row oh from its sums, 16 columns at a time: y = clamp(float(ones - 2 acc) * scale[o] + shift[o]
// (+ residual), low, high) in that float order (the scalar epilogue's; max and min keep a NaN as it does), and,
// where `bits` is given, each output's sign bits, gathered per pixel over 64 channels in registers.
static void row_epilogue(const uint32_t* acc, const int32_t* ones, const Epilogue& e, const Shape& s, int oh,
                         float* y, const SignBits* bits) {
    const size_t plane = static_cast<size_t>(s.out_h) * s.out_w, row = static_cast<size_t>(oh) * s.out_w;
    const __m512 low = _mm512_set1_ps(e.low), high = _mm512_set1_ps(e.high);
    for (int first = 0; first < s.out_w; first += 16) {
        const __mmask16 valid = s.out_w - first >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (s.out_w - first)) - 1);
        const __m512i count = _mm512_maskz_loadu_epi32(valid, ones + first);
        for (int word = 0; 64 * word < s.out_c; ++word) {
            __m512i n[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}, p[2] = {n[0], n[0]};
            for (int o = 64 * word; o < std::min(s.out_c, 64 * word + 64); ++o) {
                const __m512i sums = _mm512_maskz_loadu_epi32(valid, acc + static_cast<size_t>(o) * s.cols + first);
                // the maskz forms: GCC 12 warns that the unmasked ones' undefined source may be used
                __m512 v = _mm512_maskz_cvtepi32_ps(valid, _mm512_sub_epi32(count, _mm512_add_epi32(sums, sums)));
                v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(e.scale[o])), _mm512_set1_ps(e.shift[o]));
                const size_t at = o * plane + row + first;
                if (e.residual != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(valid, e.residual + at));
                v = _mm512_maskz_min_ps(valid, high, _mm512_maskz_max_ps(valid, low, v));  // std::min(std::max(v, low), high)
                _mm512_mask_storeu_ps(y + at, valid, v);
                if (bits != nullptr) or_sign_bits(v, valid, o, bits->one_plane, n, p);
            }
            if (bits != nullptr) {
                store_words(bits->half_n + word * bits->area + row + first, valid, n);
                store_words(bits->half_p + word * bits->area + row + first, valid, p);
            }
        }
    }
}

// Pooled output row ph (binary_kernel.hpp: pool_row) from the sums of conv rows 2ph (acc, ones) and 2ph + 1
// (acc + below, ones + cols), 16 pooled columns at a time: the four sums of each window reduced in int32 lanes
// (rows, then column pairs gathered by permutes), then the float epilogue of row_epilogue with the affine after
// the pool, and the sign bits.
static void pool_epilogue(const uint32_t* acc, const int32_t* ones, size_t below, const Epilogue& e, const Shape& s,
                          int ph, float* y, const SignBits* bits) {
    const int width = s.out_w / 2;
    const size_t plane = static_cast<size_t>(s.out_h / 2) * width, row = static_cast<size_t>(ph) * width;
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    const __m512 low = _mm512_set1_ps(e.low), high = _mm512_set1_ps(e.high);
    const __mmask16 all = 0xFFFF;  // the maskz forms: GCC 12 warns about the unmasked ones' undefined source
    for (int first = 0; first < width; first += 16) {
        const int count = std::min(16, width - first), column = 2 * first;
        const __mmask16 valid = static_cast<__mmask16>((1u << count) - 1);
        const __mmask16 left = static_cast<__mmask16>((1u << std::min(16, 2 * count)) - 1);  // conv columns
        const __mmask16 right = static_cast<__mmask16>((1u << std::max(0, 2 * count - 16)) - 1);
        const __m512i ones_top[2] = {_mm512_maskz_loadu_epi32(left, ones + column),
                                     _mm512_maskz_loadu_epi32(right, ones + column + 16)};
        const __m512i ones_bottom[2] = {_mm512_maskz_loadu_epi32(left, ones + s.cols + column),
                                        _mm512_maskz_loadu_epi32(right, ones + s.cols + column + 16)};
        const auto sums = [&](const uint32_t* at, const __m512i* count_of, int half) {  // ones - 2 acc
            const __m512i a = _mm512_maskz_loadu_epi32(half == 0 ? left : right, at + 16 * half);
            return _mm512_sub_epi32(count_of[half], _mm512_add_epi32(a, a));
        };
        for (int word = 0; 64 * word < s.out_c; ++word) {
            __m512i n[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}, p[2] = {n[0], n[0]};
            for (int o = 64 * word; o < std::min(s.out_c, 64 * word + 64); ++o) {
                const uint32_t* top = acc + static_cast<size_t>(o) * s.cols + column;
                const bool largest = !(e.scale[o] < 0.0f);
                __m512i pair[2];
                for (int half = 0; half < 2; ++half) {
                    const __m512i t = sums(top, ones_top, half), b = sums(top + below, ones_bottom, half);
                    pair[half] = largest ? _mm512_maskz_max_epi32(all, t, b) : _mm512_maskz_min_epi32(all, t, b);
                }
                const __m512i left_of = _mm512_permutex2var_epi32(pair[0], even, pair[1]);
                const __m512i right_of = _mm512_permutex2var_epi32(pair[0], odd, pair[1]);
                const __m512i kept = largest ? _mm512_maskz_max_epi32(all, left_of, right_of)
                                     : _mm512_maskz_min_epi32(all, left_of, right_of);
                __m512 v = _mm512_maskz_cvtepi32_ps(valid, kept);
                v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(e.scale[o])), _mm512_set1_ps(e.shift[o]));
                v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(e.post_scale[o])), _mm512_set1_ps(e.post_shift[o]));
                const size_t at = o * plane + row + first;
                if (e.residual != nullptr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(valid, e.residual + at));
                v = _mm512_maskz_min_ps(valid, high, _mm512_maskz_max_ps(valid, low, v));
                _mm512_mask_storeu_ps(y + at, valid, v);
                if (bits != nullptr) or_sign_bits(v, valid, o, bits->one_plane, n, p);
            }
            if (bits != nullptr) {
                store_words(bits->half_n + word * bits->area + row + first, valid, n);
                store_words(bits->half_p + word * bits->area + row + first, valid, p);
            }
        }
    }
}

// The sums of output row oh: acc[o][ow] (row stride cols) = popcount(N & (P xor W)) and ones[ow] = popcount(N),
// each over ow's window.
static void row_sums_avx512(int variant, const uint64_t* nonzero, const uint64_t* positive,
                            const uint64_t* weight_bits, const Shape& s, int oh, uint32_t* acc, int32_t* ones) {
    thread_local RowSteps r;
    r.steps = 0;
    for (int kh = 0; kh < s.kernel_h; ++kh) {
        const int ih = oh * s.stride - s.pad + kh;
        if (ih < 0 || ih >= s.height) continue;
        for (int j = 0; j < s.words; ++j, ++r.steps) {
            r.n_at[r.steps] = nonzero + (static_cast<size_t>(ih) * s.words + j) * s.cols;
            r.p_at[r.steps] = positive + (static_cast<size_t>(ih) * s.words + j) * s.cols;
            r.w_at[r.steps] = weight_bits + (static_cast<size_t>(kh) * s.words + j) * s.outs;
        }
    }
    window_ones(r, s.cols, ones);
    popcount_sums(variant, r, s, acc);
}

// One output row (image b's packed planes, output row oh) into y and, where given, its sign bits.
static void conv_row_avx512(int variant, const uint64_t* nonzero, const uint64_t* positive, const uint64_t* weight_bits,
                            const Epilogue& e, const Shape& s, int oh, float* y, const SignBits* bits) {
    thread_local Scratch<uint32_t> acc_buffer;
    thread_local Scratch<int32_t> ones_buffer;
    uint32_t* acc = acc_buffer.get(static_cast<size_t>(s.outs) * s.cols);
    int32_t* ones = ones_buffer.get(s.cols);
    row_sums_avx512(variant, nonzero, positive, weight_bits, s, oh, acc, ones);
    row_epilogue(acc, ones, e, s, oh, y, bits);
}

}  // namespace SLIMKIT_ISA
}  // namespace slimkit
