// Sparse int8 convolution over blocks of 4 input channels: every kept block is 4 weights of one output
// channel at one kernel tap, for input channels 4g..4g+3 (the mask constraint `block: 4` trains for). The
// quantized input is laid out [group][stride phase][position][4 channels] as int16, so a block multiplies
// 4 channels of consecutive positions with one vpmaddwd (AVX2) or vpdpwssd (AVX-512 VNNI) each: exact
// int16 x int16 pair sums in int32 (AVX2's vpmaddubsw would saturate its int16 sums, as onnxruntime's int8 does
// on CPUs without VNNI). Positions run
// flat over a stride-1 phase plane, as in sparse_kernel.hpp. Compiled once per instruction set.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernel_shapes.hpp"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace slimkit {
namespace SLIMKIT_ISA {

// q = clamp(nearbyint(x * (1 / step)), low, high), the integer torch.fake_quantize_per_tensor_affine takes
// (round half to even, multiply by the reciprocal).
static inline float quantize_value(float x, float inverse, float low, float high) {
    return std::min(std::max(std::nearbyint(x * inverse), low), high);  // minss/maxss, no libm call
}

// `count` floats of x, `x_stride` apart (one channel's row, or one stride phase of it), as integers on
// `grid`, written every 4th int16 of `out` (one channel of a 4-channel group).
void quantize_row(const float* x, int x_stride, int count, const QuantGrid& grid, int16_t* out) {
    const float inverse = 1.0f / grid.step;
    for (int i = 0; i < count; ++i)
        out[4 * i] = static_cast<int16_t>(quantize_value(x[i * x_stride], inverse, grid.low, grid.high));
}

#if defined(__AVX2__)
// 8 positions of 4 channels (c[k]: channel k's 8 int16) stored interleaved, out[4 i + k] = c[k][i].
static inline void store_interleaved(const __m128i* c, int16_t* out) {
    const __m128i lo01 = _mm_unpacklo_epi16(c[0], c[1]), hi01 = _mm_unpackhi_epi16(c[0], c[1]);
    const __m128i lo23 = _mm_unpacklo_epi16(c[2], c[3]), hi23 = _mm_unpackhi_epi16(c[2], c[3]);
    __m128i* at = reinterpret_cast<__m128i*>(out);
    _mm_storeu_si128(at, _mm_unpacklo_epi32(lo01, lo23));
    _mm_storeu_si128(at + 1, _mm_unpackhi_epi32(lo01, lo23));
    _mm_storeu_si128(at + 2, _mm_unpacklo_epi32(hi01, hi23));
    _mm_storeu_si128(at + 3, _mm_unpackhi_epi32(hi01, hi23));
}
#endif

// `count` consecutive positions of the 4 channel rows x[0..3] (null: a channel past the last, all 0) as
// integers on `grid`, interleaved into out[4 i + k]: one 4-channel group's row of a stride-1 plane.
void quantize_group_row(const float* const* x, int count, const QuantGrid& grid, int16_t* out) {
    const float inverse = 1.0f / grid.step;
    int i = 0;
#if defined(__AVX2__)
    const __m256 scale = _mm256_set1_ps(inverse), low = _mm256_set1_ps(grid.low), high = _mm256_set1_ps(grid.high);
    for (; i + 8 <= count; i += 8) {
        __m128i c[4];
        for (int k = 0; k < 4; ++k) {
            if (x[k] == nullptr) {
                c[k] = _mm_setzero_si128();
                continue;
            }
            const __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x[k] + i), scale),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            const __m256i q = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, low), high));
            c[k] = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        }
        store_interleaved(c, out + 4 * i);
    }
#endif
    for (; i < count; ++i)
        for (int k = 0; k < 4; ++k)
            out[4 * i + k] = x[k] == nullptr ? int16_t{0}
                                             : static_cast<int16_t>(quantize_value(x[k][i], inverse, grid.low, grid.high));
}

// A linear layer's input row: `count` features of x (contiguous) as integers on `grid`, feature i written to
// out[(i / 4) * group_stride + i % 4], so each group of 4 features lands in its own plane at this row's position
// (the [group][position][4 features] layout quant_sparse_row reads). The caller sets the spare places of a last
// partial group.
void quantize_features(const float* x, int count, const QuantGrid& grid, int16_t* out, size_t group_stride) {
    const float inverse = 1.0f / grid.step;
    int i = 0;
#if defined(__AVX2__)
    const __m256 scale = _mm256_set1_ps(inverse), low = _mm256_set1_ps(grid.low), high = _mm256_set1_ps(grid.high);
    for (; i + 8 <= count; i += 8) {
        const __m256 v = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), scale),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        const __m256i q = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, low), high));
        const __m128i packed = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out + (i / 4) * group_stride), packed);
        _mm_storel_epi64(reinterpret_cast<__m128i*>(out + (i / 4 + 1) * group_stride), _mm_unpackhi_epi64(packed, packed));
    }
#endif
    for (; i < count; ++i)
        out[(i / 4) * group_stride + i % 4] = static_cast<int16_t>(quantize_value(x[i], inverse, grid.low, grid.high));
}

#if defined(__AVX2__)
// acc + the int32 sums of adjacent int16 pairs of x * w (exact: no saturation). AVX-512 VNNI's vpdpwssd does
// it in one instruction; AVX2 needs vpmaddwd then vpaddd. The results are identical, bit for bit.
static inline __m256i pair_sums_add(__m256i acc, __m256i x, __m256i w) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpwssd_epi32(acc, x, w);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(x, w));
#endif
}
#endif

// acc[i] = sum over output channel o's blocks e of the 4-channel dot product of weights[4e..4e+3] with the
// planes at offset[e] + 4 (start + i), for i < length. The caller rounds length up to a multiple of
// QUANT_TILE (positions past the outputs it keeps are computed and dropped), so no scalar tail runs (a ResNet
// layer at 8 x 8 spans 78 positions, 14 of which would otherwise run one at a time).
void quant_sparse_row(const int16_t* planes, const QuantBlocks& w, int o, size_t start, int length, int32_t* acc) {
    int i = 0;
    const int64_t first = w.ptr[o], last = w.ptr[o + 1];
#if defined(__AVX2__)
    // 32 positions at a time in 8 registers (4 positions of 2 pair sums each); one broadcast per block
    const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
    for (; i + 32 <= length; i += 32) {
        __m256i a[8];
        for (auto& r : a) r = _mm256_setzero_si256();
        for (int64_t e = first; e < last; ++e) {
            int64_t packed;
            std::memcpy(&packed, w.weights + 4 * e, sizeof(packed));
            const __m256i weight = _mm256_set1_epi64x(packed);
            const int16_t* src = planes + w.offset[e] + 4 * (start + i);
            for (int r = 0; r < 8; ++r)
                a[r] = pair_sums_add(a[r], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 16 * r)), weight);
        }
        for (int r = 0; r < 8; r += 2)  // pair sums -> one sum per position, positions back in order
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + i + 4 * r),
                                _mm256_permutevar8x32_epi32(_mm256_hadd_epi32(a[r], a[r + 1]), order));
    }
#endif
    for (int j = i; j < length; ++j) acc[j] = 0;
    for (int64_t e = first; e < last; ++e) {
        const int16_t* src = planes + w.offset[e] + 4 * start;
        const int32_t w0 = w.weights[4 * e], w1 = w.weights[4 * e + 1], w2 = w.weights[4 * e + 2],
                      w3 = w.weights[4 * e + 3];
        for (int j = i; j < length; ++j)
            acc[j] += w0 * src[4 * j] + w1 * src[4 * j + 1] + w2 * src[4 * j + 2] + w3 * src[4 * j + 3];
    }
}

// The kernel's inner step at its best: `rounds` x 8 independent pair-sum accumulations on registers (no
// loads, 8 accumulators in flight), the int8 peak one thread sustains with this instruction set. Returns the
// multiplies done; `sink` keeps the sums alive. The empty asm makes x opaque before every step, so the
// compiler can neither hoist the multiply out of the loop nor share one multiply between the chains.
int64_t pair_sum_peak(int64_t rounds, int32_t* sink) {
    constexpr int chains = 8;
#if defined(__AVX2__)
    __m256i a[chains];
    __m256i x = _mm256_set1_epi16(3);
    const __m256i w = _mm256_set1_epi16(-2);
    for (auto& r : a) r = _mm256_setzero_si256();
    for (int64_t i = 0; i < rounds; ++i)
        for (int r = 0; r < chains; ++r) {
            __asm__ volatile("" : "+x"(x));
            a[r] = pair_sums_add(a[r], x, w);
        }
    __m256i total = a[0];
    for (int r = 1; r < chains; ++r) total = _mm256_add_epi32(total, a[r]);
    *sink += _mm256_extract_epi32(total, 0);
    return rounds * chains * 16;
#else
    int32_t a[chains][8] = {};
    int32_t xv = 3;
    const int32_t wv = -2;
    for (int64_t i = 0; i < rounds; ++i)
        for (int r = 0; r < chains; ++r) {
            __asm__ volatile("" : "+r"(xv));  // opaque at every step: the products cannot be hoisted or folded
            for (int k = 0; k < 8; ++k) a[r][k] += (xv + k) * wv + (xv ^ k) * (wv - k);  // two products a lane
        }
    for (int r = 0; r < chains; ++r) *sink += a[r][0];
    return rounds * chains * 16;
#endif
}

// The integer of v on `grid` (a float holding a whole number), or v itself where there is no grid.
static inline float grid_integer(float v, const QuantGrid& grid, float inverse) {
    return grid.step > 0 ? quantize_value(v, inverse, grid.low, grid.high) : v;
}

#if defined(__AVX2__)
static inline __m256 grid_integer8(__m256 v, const QuantGrid& grid, __m256 inverse) {
    const __m256 q = _mm256_round_ps(_mm256_mul_ps(v, inverse), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    return _mm256_min_ps(_mm256_max_ps(q, _mm256_set1_ps(grid.low)), _mm256_set1_ps(grid.high));
}
#endif

// One output channel's plane: y[r][i] = post(clamp(pre(acc[r][i] * scale + bias) (+ residual[r][i]), low,
// high)) for rows r < rows (acc rows `acc_stride` apart, y and residual rows `width` apart), pre and post the
// fused quantizers (identity where their step is 0): the fake-quant graph's order of operations, in one pass.
// With `ints`, also the integers of y on its last grid (post, else pre), rows `width` apart: what the next
// operator reads instead of y (see QuantSparseConv2d's link_output); y may then be null (nothing reads it).
void quant_epilogue(const int32_t* acc, int acc_stride, int rows, int width, float scale, float bias,
                    const float* residual, const QuantEpilogue& e, float* y, int16_t* ints) {
    const bool pre = e.pre.step > 0, post = e.post.step > 0;
    const float pre_inverse = pre ? 1.0f / e.pre.step : 0.0f, post_inverse = post ? 1.0f / e.post.step : 0.0f;
    for (int r = 0; r < rows; ++r) {
        const int32_t* a = acc + static_cast<size_t>(r) * acc_stride;
        float* out = y != nullptr ? y + static_cast<size_t>(r) * width : nullptr;
        int16_t* integers = ints != nullptr ? ints + static_cast<size_t>(r) * width : nullptr;
        const float* add = residual != nullptr ? residual + static_cast<size_t>(r) * width : nullptr;
        int i = 0;
#if defined(__AVX2__)
        const __m256 vscale = _mm256_set1_ps(scale), vbias = _mm256_set1_ps(bias);
        const __m256 low = _mm256_set1_ps(e.low), high = _mm256_set1_ps(e.high);
        const __m256 vpre = _mm256_set1_ps(pre_inverse), vpost = _mm256_set1_ps(post_inverse);
        const __m256 pre_step = _mm256_set1_ps(e.pre.step), post_step = _mm256_set1_ps(e.post.step);
        for (; i + 8 <= width; i += 8) {
            __m256 v = _mm256_cvtepi32_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)));
            v = _mm256_add_ps(_mm256_mul_ps(v, vscale), vbias);
            __m256 q = v;  // the integers of the last grid applied
            if (pre) v = _mm256_mul_ps(q = grid_integer8(v, e.pre, vpre), pre_step);
            if (add != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(add + i));
            v = _mm256_min_ps(_mm256_max_ps(v, low), high);
            if (post) v = _mm256_mul_ps(q = grid_integer8(v, e.post, vpost), post_step);
            if (out != nullptr) _mm256_storeu_ps(out + i, v);
            if (integers != nullptr) {
                const __m256i whole = _mm256_cvtps_epi32(q);
                _mm_storeu_si128(reinterpret_cast<__m128i*>(integers + i),
                                 _mm_packs_epi32(_mm256_castsi256_si128(whole), _mm256_extracti128_si256(whole, 1)));
            }
        }
#endif
        for (; i < width; ++i) {
            float v = static_cast<float>(a[i]) * scale + bias, q = v;
            if (pre) v = (q = grid_integer(v, e.pre, pre_inverse)) * e.pre.step;
            if (add != nullptr) v += add[i];
            v = std::min(std::max(v, e.low), e.high);
            if (post) v = (q = grid_integer(v, e.post, post_inverse)) * e.post.step;
            if (out != nullptr) out[i] = v;
            if (integers != nullptr) integers[i] = static_cast<int16_t>(q);
        }
    }
}

#if defined(__AVX2__)
// r[k] becomes column k of the 8 x 8 matrix whose rows r held.
static inline void transpose8(__m256* r) {
    __m256 t[8], s[8];
    for (int k = 0; k < 8; k += 2) {
        t[k] = _mm256_unpacklo_ps(r[k], r[k + 1]);
        t[k + 1] = _mm256_unpackhi_ps(r[k], r[k + 1]);
    }
    for (int k = 0; k < 8; k += 4) {
        s[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
        s[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);
        s[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
        s[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
    }
    for (int k = 0; k < 4; ++k) {
        r[k] = _mm256_permute2f128_ps(s[k], s[k + 4], 0x20);
        r[k + 4] = _mm256_permute2f128_ps(s[k], s[k + 4], 0x31);
    }
}
#endif

// A linear layer's outputs for `outputs` output features x `positions` rows: y[m][o] = clamp(acc[o][m] * scale[o]
// + bias[o] (+ residual[m][o]), low, high), acc rows `acc_stride` apart (one per output feature, as
// quant_sparse_row computes them), y and residual rows `y_stride` apart (row-major [rows, features], the layout
// of the layer's output). The AVX2 path transposes 8 x 8 blocks in registers; the float arithmetic is the scalar
// path's, in the same order.
void quant_linear_epilogue(const int32_t* acc, int acc_stride, int outputs, int positions, const float* scale,
                           const float* bias, const float* residual, size_t y_stride, float low, float high, float* y) {
    int o = 0;
#if defined(__AVX2__)
    const __m256 vlow = _mm256_set1_ps(low), vhigh = _mm256_set1_ps(high);
    for (; o + 8 <= outputs; o += 8) {
        const __m256 vscale = _mm256_loadu_ps(scale + o), vbias = _mm256_loadu_ps(bias + o);
        int m = 0;
        for (; m + 8 <= positions; m += 8) {
            __m256 r[8];
            for (int k = 0; k < 8; ++k)
                r[k] = _mm256_cvtepi32_ps(_mm256_loadu_si256(
                    reinterpret_cast<const __m256i*>(acc + static_cast<size_t>(o + k) * acc_stride + m)));
            transpose8(r);  // r[k]: the 8 outputs of row m + k
            for (int k = 0; k < 8; ++k) {
                const size_t at = static_cast<size_t>(m + k) * y_stride + o;
                __m256 v = _mm256_add_ps(_mm256_mul_ps(r[k], vscale), vbias);
                if (residual != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(residual + at));
                _mm256_storeu_ps(y + at, _mm256_min_ps(_mm256_max_ps(v, vlow), vhigh));
            }
        }
        for (; m < positions; ++m)
            for (int k = 0; k < 8; ++k) {
                const size_t at = static_cast<size_t>(m) * y_stride + o + k;
                float v = static_cast<float>(acc[static_cast<size_t>(o + k) * acc_stride + m]) * scale[o + k] + bias[o + k];
                if (residual != nullptr) v += residual[at];
                y[at] = std::min(std::max(v, low), high);
            }
    }
#endif
    for (int m = 0; m < positions; ++m)
        for (int k = o; k < outputs; ++k) {
            const size_t at = static_cast<size_t>(m) * y_stride + k;
            float v = static_cast<float>(acc[static_cast<size_t>(k) * acc_stride + m]) * scale[k] + bias[k];
            if (residual != nullptr) v += residual[at];
            y[at] = std::min(std::max(v, low), high);
        }
}

// Four channel planes of `count` int16 (null: a channel past the last, all 0) interleaved into out[4 i + k].
void interleave_group(const int16_t* const* c, size_t count, int16_t* out) {
    size_t i = 0;
#if defined(__AVX2__)
    for (; i + 8 <= count; i += 8) {
        __m128i v[4];
        for (int k = 0; k < 4; ++k)
            v[k] = c[k] == nullptr ? _mm_setzero_si128() : _mm_loadu_si128(reinterpret_cast<const __m128i*>(c[k] + i));
        store_interleaved(v, out + 4 * i);
    }
#endif
    for (; i < count; ++i)
        for (int k = 0; k < 4; ++k) out[4 * i + k] = c[k] == nullptr ? int16_t{0} : c[k][i];
}

}  // namespace SLIMKIT_ISA
}  // namespace slimkit
