// The sparse int8 conv's VNNI kernel: unsigned 8-bit inputs times signed 8-bit weights, 4 products summed into
// each int32 lane by one vpdpbusd (exact: no intermediate saturation, unlike AVX2's vpmaddubsw). The input planes
// are laid out as quant_sparse_kernel.hpp's int16 ones, [group][stride phase][position][4 channels], but one
// byte an integer: a 256-bit register holds 8 positions' 4 channels (the int16 layout: 4), and the sums come out
// one per position, so the kernel needs half the loads and multiplies and no pair-sum folding. A grid with
// negative integers (a signed input, such as the first layer's or a residual sum's) is offset by 128 into
// 0..255; the kernel subtracts 128 x the output channel's weight sum, so every sum is exactly the int16
// kernel's. Compiled into the AVX-512 build only (it needs VNNI, BW and VL); quant_sparse_kernel.hpp must come
// first (quantize_value).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>

#include <immintrin.h>

#include "kernel_shapes.hpp"

namespace slimkit {
namespace SLIMKIT_ISA {

// `count` floats of x, `x_stride` apart, as integers on `grid` plus `offset`, every 4th byte of `out`.
void quantize_row_u8(const float* x, int x_stride, int count, const QuantGrid& grid, int offset, uint8_t* out) {
    const float inverse = 1.0f / grid.step;
    for (int i = 0; i < count; ++i)
        out[4 * i] = static_cast<uint8_t>(static_cast<int>(quantize_value(x[i * x_stride], inverse, grid.low,
                                                                         grid.high)) + offset);
}

// `count` positions of the 4 channel rows x[0..3] (null: a channel past the last, its integer 0) as integers on
// `grid` plus `offset`, interleaved into out[4 i + k].
void quantize_group_row_u8(const float* const* x, int count, const QuantGrid& grid, int offset, uint8_t* out) {
    const float inverse = 1.0f / grid.step;
    const __m256 scale = _mm256_set1_ps(inverse), low = _mm256_set1_ps(grid.low), high = _mm256_set1_ps(grid.high);
    const __m256i shift = _mm256_set1_epi32(offset);
    int i = 0;
    for (; i + 8 <= count; i += 8) {
        __m128i c[4];
        for (int k = 0; k < 4; ++k) {
            if (x[k] == nullptr) {
                c[k] = _mm256_mask_cvtepi32_epi8(_mm_setzero_si128(), 0xFF, shift);
                continue;
            }
            const __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x[k] + i), scale),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m256i q = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, low), high));
            c[k] = _mm256_mask_cvtepi32_epi8(_mm_setzero_si128(), 0xFF, _mm256_add_epi32(q, shift));  // 8 bytes, low half
        }
        const __m128i c01 = _mm_unpacklo_epi8(c[0], c[1]), c23 = _mm_unpacklo_epi8(c[2], c[3]);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * i), _mm_unpacklo_epi16(c01, c23));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 4 * i + 16), _mm_unpackhi_epi16(c01, c23));
    }
    for (; i < count; ++i)
        for (int k = 0; k < 4; ++k)
            out[4 * i + k] = static_cast<uint8_t>(
                (x[k] == nullptr ? 0 : static_cast<int>(quantize_value(x[k][i], inverse, grid.low, grid.high))) + offset);
}

// A linear layer's input row as quantize_features lays it out (feature i at out[(i / 4) * group_stride + i % 4]),
// each integer plus `offset`, one byte each.
void quantize_features_u8(const float* x, int count, const QuantGrid& grid, int offset, uint8_t* out,
                          size_t group_stride) {
    const float inverse = 1.0f / grid.step;
    const __m256 scale = _mm256_set1_ps(inverse), low = _mm256_set1_ps(grid.low), high = _mm256_set1_ps(grid.high);
    const __m256i shift = _mm256_set1_epi32(offset);
    int i = 0;
    for (; i + 8 <= count; i += 8) {
        const __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256i q = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, low), high));
        const __m128i bytes = _mm256_mask_cvtepi32_epi8(_mm_setzero_si128(), 0xFF, _mm256_add_epi32(q, shift));  // 8 bytes
        const int32_t first = _mm_cvtsi128_si32(bytes), second = _mm_extract_epi32(bytes, 1);
        std::memcpy(out + (i / 4) * group_stride, &first, sizeof(first));
        std::memcpy(out + (i / 4 + 1) * group_stride, &second, sizeof(second));
    }
    for (; i < count; ++i)
        out[(i / 4) * group_stride + i % 4] =
            static_cast<uint8_t>(static_cast<int>(quantize_value(x[i], inverse, grid.low, grid.high)) + offset);
}

// acc[i] = sum over output channel o's blocks e of the 4-channel dot product of weights[e] with the planes at
// offset[e] + 4 (start + i), minus compensation[o], for i < length (a multiple of QUANT_TILE, as for
// quant_sparse_row). Variant 0: 32 positions at a time in four 256-bit accumulators; 1: 64 in four 512-bit ones.
void quant_sparse_row_u8(int variant, const uint8_t* planes, const QuantBlocks8& w, int o, size_t start, int length,
                         int32_t* acc) {
    const int64_t first = w.ptr[o], last = w.ptr[o + 1];
    int i = 0;
    if (variant == 1) {
        const __m512i minus = _mm512_set1_epi32(w.compensation[o]);
        for (; i + 64 <= length; i += 64) {
            __m512i a[4];
            for (auto& r : a) r = _mm512_setzero_si512();
            for (int64_t e = first; e < last; ++e) {
                const __m512i weight = _mm512_set1_epi32(w.weights[e]);
                const uint8_t* src = planes + w.offset[e] + 4 * (start + i);
                for (int r = 0; r < 4; ++r) a[r] = _mm512_dpbusd_epi32(a[r], _mm512_loadu_si512(src + 64 * r), weight);
            }
            for (int r = 0; r < 4; ++r) _mm512_storeu_si512(acc + i + 16 * r, _mm512_sub_epi32(a[r], minus));
        }
    }
    const __m256i minus = _mm256_set1_epi32(w.compensation[o]);
    for (; i + 32 <= length; i += 32) {
        __m256i a[4];
        for (auto& r : a) r = _mm256_setzero_si256();
        for (int64_t e = first; e < last; ++e) {
            const __m256i weight = _mm256_set1_epi32(w.weights[e]);
            const uint8_t* src = planes + w.offset[e] + 4 * (start + i);
            for (int r = 0; r < 4; ++r)
                a[r] = _mm256_dpbusd_epi32(a[r], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * r)),
                                           weight);
        }
        for (int r = 0; r < 4; ++r)
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + i + 8 * r), _mm256_sub_epi32(a[r], minus));
    }
    for (int j = i; j < length; ++j) {
        int32_t total = -w.compensation[o];
        for (int64_t e = first; e < last; ++e) {
            const uint8_t* src = planes + w.offset[e] + 4 * (start + j);
            int8_t weight[4];
            std::memcpy(weight, &w.weights[e], sizeof(weight));
            for (int k = 0; k < 4; ++k) total += static_cast<int32_t>(src[k]) * weight[k];
        }
        acc[j] = total;
    }
}

// The VNNI kernel's inner step at its best: `rounds` x 8 independent vpdpbusd accumulations on registers, as
// pair_sum_peak does for the int16 step. Returns the multiplies done (4 per int32 lane).
int64_t quad_sum_peak(int variant, int64_t rounds, int32_t* sink) {
    constexpr int chains = 8;
    if (variant == 1) {
        __m512i a[chains];
        __m512i x = _mm512_set1_epi8(3);
        const __m512i w = _mm512_set1_epi8(-2);
        for (auto& r : a) r = _mm512_setzero_si512();
        for (int64_t i = 0; i < rounds; ++i)
            for (int r = 0; r < chains; ++r) {
                __asm__ volatile("" : "+v"(x));
                a[r] = _mm512_dpbusd_epi32(a[r], x, w);
            }
        __m512i total = a[0];
        for (int r = 1; r < chains; ++r) total = _mm512_add_epi32(total, a[r]);
        int32_t lanes[16];
        _mm512_storeu_si512(lanes, total);
        *sink += lanes[0];
        return rounds * chains * 64;
    }
    __m256i a[chains];
    __m256i x = _mm256_set1_epi8(3);
    const __m256i w = _mm256_set1_epi8(-2);
    for (auto& r : a) r = _mm256_setzero_si256();
    for (int64_t i = 0; i < rounds; ++i)
        for (int r = 0; r < chains; ++r) {
            __asm__ volatile("" : "+x"(x));
            a[r] = _mm256_dpbusd_epi32(a[r], x, w);
        }
    __m256i total = a[0];
    for (int r = 1; r < chains; ++r) total = _mm256_add_epi32(total, a[r]);
    *sink += _mm256_extract_epi32(total, 0);
    return rounds * chains * 32;
}

}  // namespace SLIMKIT_ISA
}  // namespace slimkit
