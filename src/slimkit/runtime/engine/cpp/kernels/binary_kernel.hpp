// Bit-packed binary convolution, exact for the training graph's sign(0) = 0 and zero padding.
// The same algorithm as slimkit/runtime/eager/binary_kernels.py (see its docstring): activations are packed
// along channels into two planes, N (non-zero) and P (positive), stored [row, word, column] per image
// (binary_pack.hpp); weights are the positive-bit plane [kh, word, out]; one window sums to
//     popcount(N) - 2 popcount(N & (P xor Wp)).
// This header is compiled once per instruction set (kernels_avx512.cpp, kernels_avx2.cpp, kernels_generic.cpp
// include it, each inside its own namespace slimkit::<isa>); dispatch.cpp picks one at run time. The AVX2 and
// portable builds' sums are here; the AVX-512 build's row is binary_avx512.hpp.
#pragma once
#include <cstdint>
#include <algorithm>
#include <cstring>

#include "binary_pack.hpp"
#include "kernel_shapes.hpp"
#ifdef SLIMKIT_AVX512_POPCOUNT
#include "binary_avx512.hpp"
#endif

namespace slimkit {
namespace SLIMKIT_ISA {

#ifdef SLIMKIT_AVX2_POPCOUNT
// Bit counts per byte of four 64-bit lanes: nibble lookups with vpshufb. AVX2 has no vector popcount and GCC
// does not build one, so scalar POPCNT would cap the kernel at about one word a cycle.
static inline __m256i byte_counts(__m256i v) {
    const __m256i lookup = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lookup, _mm256_and_si256(v, low)),
                           _mm256_shuffle_epi8(lookup, _mm256_and_si256(_mm256_srli_epi16(v, 4), low)));
}

static inline __m256i load(const uint64_t* at) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at)); }

// O x 4V sums of popcount(N & (P xor W)) over `steps` words: output channels `o`..`o + O - 1` against 4V
// consecutive columns. Each step loads the 4V columns' N and P words once for all O channels and broadcasts
// each channel's weight word. Byte counts add up in registers for up to 31 steps (8 each: 248 < 256), then
// one vpsadbw folds them into 64-bit lanes.
template <int O, int V, bool OnePlane>
static inline void block_sums(const uint64_t* const* n_at, const uint64_t* const* p_at,
                              const uint64_t* const* w_at, int steps, int o, int first, uint32_t* acc, int cols) {
    const __m256i zero = _mm256_setzero_si256();
    __m256i total[O][V], bytes[O][V];
    for (int i = 0; i < O; ++i)
        for (int v = 0; v < V; ++v) total[i][v] = bytes[i][v] = zero;
    int pending = 0;
    for (int t = 0; t < steps; ++t) {
        __m256i w[O];
        for (int i = 0; i < O; ++i) w[i] = _mm256_set1_epi64x(static_cast<long long>(w_at[t][o + i]));
        for (int v = 0; v < V; ++v) {
            const __m256i p = load(p_at[t] + first + 4 * v);
            if (OnePlane) {  // no padding in these windows' words (see fix_border_columns): P alone
                for (int i = 0; i < O; ++i)
                    bytes[i][v] = _mm256_add_epi8(bytes[i][v], byte_counts(_mm256_xor_si256(p, w[i])));
            } else {
                const __m256i n = load(n_at[t] + first + 4 * v);
                for (int i = 0; i < O; ++i)
                    bytes[i][v] = _mm256_add_epi8(bytes[i][v],
                                                  byte_counts(_mm256_and_si256(n, _mm256_xor_si256(p, w[i]))));
            }
        }
        if (++pending == 31) {
            for (int i = 0; i < O; ++i)
                for (int v = 0; v < V; ++v) {
                    total[i][v] = _mm256_add_epi64(total[i][v], _mm256_sad_epu8(bytes[i][v], zero));
                    bytes[i][v] = zero;
                }
            pending = 0;
        }
    }
    const __m256i low_halves = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);  // the sums fit 32 bits
    for (int i = 0; i < O; ++i)
        for (int v = 0; v < V; ++v) {
            const __m256i sums = _mm256_add_epi64(total[i][v], _mm256_sad_epu8(bytes[i][v], zero));
            _mm_storeu_si128(reinterpret_cast<__m128i*>(acc + static_cast<size_t>(o + i) * cols + first + 4 * v),
                             _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(sums, low_halves)));
        }
}

template <int O, bool OnePlane>
static inline void channel_sums(const uint64_t* const* n_at, const uint64_t* const* p_at, const uint64_t* const* w_at,
                                int steps, int o, const Shape& s, uint32_t* acc) {
    for (int first = 0; first < s.cols; first += 16) {
        switch (std::min(4, (s.cols - first) / 4)) {
            case 4: block_sums<O, 4, OnePlane>(n_at, p_at, w_at, steps, o, first, acc, s.cols); break;
            case 3: block_sums<O, 3, OnePlane>(n_at, p_at, w_at, steps, o, first, acc, s.cols); break;
            case 2: block_sums<O, 2, OnePlane>(n_at, p_at, w_at, steps, o, first, acc, s.cols); break;
            default: block_sums<O, 1, OnePlane>(n_at, p_at, w_at, steps, o, first, acc, s.cols); break;
        }
    }
}

template <bool OnePlane>
static void all_channel_sums(const uint64_t* const* n_at, const uint64_t* const* p_at, const uint64_t* const* w_at,
                             int steps, const Shape& s, uint32_t* acc) {
    int o = 0;
    for (; o + 2 <= s.out_c; o += 2) channel_sums<2, OnePlane>(n_at, p_at, w_at, steps, o, s, acc);
    if (o < s.out_c) channel_sums<1, OnePlane>(n_at, p_at, w_at, steps, o, s, acc);
}
#endif

#ifndef SLIMKIT_AVX512_POPCOUNT
// The sums of one output row: acc[o][ow] (row stride cols) = popcount(N & (P xor W)) over the window,
// ones[ow] = popcount(N) over the window. Columns vary innermost when rows are at least half as wide as the
// layer has output channels, output channels otherwise (measured with the numba kernel on ResNet-20 and
// VGG-small shapes: each order wins clearly on its side of that line).
static void window_sums(int variant, const uint64_t* nonzero, const uint64_t* positive, const uint64_t* weight_bits,
                        const Shape& s, int oh, uint32_t* acc, int32_t* ones) {
    constexpr int max_steps = 16 * 64;  // kernel rows x words per row; the op checks the bound
    const uint64_t* n_at[max_steps];
    const uint64_t* p_at[max_steps];
    const uint64_t* w_at[max_steps];
    int steps = 0;
    for (int kh = 0; kh < s.kernel_h; ++kh) {
        const int ih = oh * s.stride - s.pad + kh;
        if (ih < 0 || ih >= s.height) continue;
        for (int j = 0; j < s.words; ++j, ++steps) {
            n_at[steps] = nonzero + (static_cast<size_t>(ih) * s.words + j) * s.cols;
            p_at[steps] = positive + (static_cast<size_t>(ih) * s.words + j) * s.cols;
            w_at[steps] = weight_bits + (static_cast<size_t>(kh) * s.words + j) * s.outs;
        }
    }
    for (int ow = 0; ow < s.cols; ++ow) ones[ow] = 0;
    for (int t = 0; t < steps; ++t)
        for (int ow = 0; ow < s.cols; ++ow) ones[ow] += __builtin_popcountll(n_at[t][ow]);
#if defined(SLIMKIT_AVX2_POPCOUNT)
    (void)variant;
    // Columns vary in the vector lanes for every layer shape: measured against the output-channel order on
    // ResNet-20 and VGG-small shapes, it was as fast or faster everywhere in this build.
    if (s.one_plane)
        all_channel_sums<true>(n_at, p_at, w_at, steps, s, acc);
    else
        all_channel_sums<false>(n_at, p_at, w_at, steps, s, acc);
#else
    // The portable build: plain loops, the varying index innermost.
    (void)variant;
    if (2 * s.out_w >= s.out_c) {
        for (int o = 0; o < s.out_c; ++o) {
            uint32_t* a = acc + static_cast<size_t>(o) * s.cols;
            for (int ow = 0; ow < s.cols; ++ow) a[ow] = 0;
            for (int t = 0; t < steps; ++t) {
                const uint64_t* n = n_at[t];
                const uint64_t* p = p_at[t];
                const uint64_t w = w_at[t][o];
                if (s.one_plane)  // P alone; fix_border_columns recounts the windows that reach the padding
                    for (int ow = 0; ow < s.cols; ++ow) a[ow] += __builtin_popcountll(p[ow] ^ w);
                else
                    for (int ow = 0; ow < s.cols; ++ow) a[ow] += __builtin_popcountll(n[ow] & (p[ow] ^ w));
            }
        }
        return;
    }
    thread_local Scratch<uint32_t> pixel_buffer;
    uint32_t* pixel = pixel_buffer.get(s.outs);
    for (int ow = 0; ow < s.out_w; ++ow) {
        std::memset(pixel, 0, sizeof(uint32_t) * s.outs);
        for (int t = 0; t < steps; ++t) {
            const uint64_t n = n_at[t][ow], p = p_at[t][ow];
            const uint64_t* w = w_at[t];
            for (int o = 0; o < s.outs; ++o) pixel[o] += __builtin_popcountll(n & (p ^ w[o]));
        }
        for (int o = 0; o < s.out_c; ++o) acc[static_cast<size_t>(o) * s.cols + ow] = pixel[o];
    }
#endif
}

// One-plane sums count popcount(P xor W), which is exact wherever N is all ones over the weight's bits (an
// image pixel is never 0 under sign(0) = +1, and bits past the last channel are 0 in P and W alike). Windows
// that reach into the left or right padding are recounted with N here; rows outside the image are skipped.
static void fix_border_columns(const uint64_t* nonzero, const uint64_t* positive, const uint64_t* weight_bits,
                               const Shape& s, int oh, uint32_t* acc) {
    for (int ow = 0; ow < s.out_w; ++ow) {
        const int left = ow * s.stride - s.pad;
        if (left >= 0 && left + s.kernel_w <= s.width) continue;
        for (int o = 0; o < s.out_c; ++o) {
            uint32_t sum = 0;
            for (int kh = 0; kh < s.kernel_h; ++kh) {
                const int ih = oh * s.stride - s.pad + kh;
                if (ih < 0 || ih >= s.height) continue;
                for (int j = 0; j < s.words; ++j) {
                    const size_t at = (static_cast<size_t>(ih) * s.words + j) * s.cols + ow;
                    sum += __builtin_popcountll(nonzero[at] & (positive[at] ^
                                                weight_bits[(static_cast<size_t>(kh) * s.words + j) * s.outs + o]));
                }
            }
            acc[static_cast<size_t>(o) * s.cols + ow] = sum;
        }
    }
}


// The sums of output row oh: acc[o][ow] (row stride cols) = popcount(N & (P xor W)) and ones[ow] = popcount(N),
// each over ow's window (the one-plane sums corrected at the borders).
static void row_sums(int variant, const uint64_t* nonzero, const uint64_t* positive, const uint64_t* weight_bits,
                     const Shape& s, int oh, uint32_t* acc, int32_t* ones) {
    window_sums(variant, nonzero, positive, weight_bits, s, oh, acc, ones);
    if (s.one_plane) fix_border_columns(nonzero, positive, weight_bits, s, oh, acc);
}
#else
static void row_sums(int variant, const uint64_t* nonzero, const uint64_t* positive, const uint64_t* weight_bits,
                     const Shape& s, int oh, uint32_t* acc, int32_t* ones) {
    row_sums_avx512(variant, nonzero, positive, weight_bits, s, oh, acc, ones);
}
#endif

// One output row (image b's packed planes, output row oh) into y (channel stride out_h * out_w): the window
// sums, then the fused epilogue y = clamp(sum * scale[o] + shift[o] (+ residual), low, high), and where `bits` is
// given the row's sign bits for the next binary layer, while the row is in cache.
void conv_row(int variant, const uint64_t* nonzero, const uint64_t* positive, const uint64_t* weight_bits, const Epilogue& e,
              const Shape& s, int oh, float* y, const SignBits* bits) {
#ifdef SLIMKIT_AVX512_POPCOUNT
    conv_row_avx512(variant, nonzero, positive, weight_bits, e, s, oh, y, bits);
#else
    thread_local Scratch<uint32_t> acc_buffer;
    thread_local Scratch<int32_t> ones_buffer;
    uint32_t* acc = acc_buffer.get(static_cast<size_t>(s.outs) * s.cols);
    int32_t* ones = ones_buffer.get(s.cols);
    row_sums(variant, nonzero, positive, weight_bits, s, oh, acc, ones);
    const size_t plane = static_cast<size_t>(s.out_h) * s.out_w;
    const float low = e.low, high = e.high;
    for (int o = 0; o < s.out_c; ++o) {  // one branch-free pass per row: int32 -> float, affine, add, clamp
        const size_t at = o * plane + static_cast<size_t>(oh) * s.out_w;
        float* row = y + at;
        const int32_t* a = reinterpret_cast<const int32_t*>(acc) + static_cast<size_t>(o) * s.cols;
        const int32_t* count = ones;
        const float scale = e.scale[o], shift = e.shift[o];
        if (e.residual != nullptr) {
            const float* r = e.residual + at;
            for (int ow = 0; ow < s.out_w; ++ow)
                row[ow] = std::min(std::max(static_cast<float>(count[ow] - 2 * a[ow]) * scale + shift + r[ow], low),
                                  high);
        } else {
            for (int ow = 0; ow < s.out_w; ++ow)
                row[ow] = std::min(std::max(static_cast<float>(count[ow] - 2 * a[ow]) * scale + shift, low), high);
        }
    }
    if (bits != nullptr)
        sign_bits(y, s.out_c, bits->area, static_cast<size_t>(oh) * s.out_w, s.out_w, bits->one_plane, bits->half_n,
                  bits->half_p);
#endif
}

// One row ph of the 2x2 max pool (stride 2) of the conv's output, from conv rows 2ph and 2ph + 1, into y
// ([out_c][out_h / 2][out_w / 2]): of each window's four sums the one the pool keeps (the largest where scale[o] >= 0,
// the smallest where it is negative: sum * scale + shift is monotone in the sum, rounding included, so this is
// exactly the max of the conv's float outputs), then y = clamp((sum * scale + shift) * post_scale + post_shift
// (+ residual), low, high), and where `bits` is given the row's sign bits.
void pool_row(int variant, const uint64_t* nonzero, const uint64_t* positive, const uint64_t* weight_bits,
              const Epilogue& e, const Shape& s, int ph, float* y, const SignBits* bits) {
    thread_local Scratch<uint32_t> acc_buffer;
    thread_local Scratch<int32_t> ones_buffer;
    const size_t sums = static_cast<size_t>(s.outs) * s.cols;
    uint32_t* acc = acc_buffer.get(2 * sums);
    int32_t* ones = ones_buffer.get(2 * static_cast<size_t>(s.cols));
    row_sums(variant, nonzero, positive, weight_bits, s, 2 * ph, acc, ones);
    row_sums(variant, nonzero, positive, weight_bits, s, 2 * ph + 1, acc + sums, ones + s.cols);
#ifdef SLIMKIT_AVX512_POPCOUNT
    pool_epilogue(acc, ones, sums, e, s, ph, y, bits);
#else
    const int width = s.out_w / 2;
    const size_t plane = static_cast<size_t>(s.out_h / 2) * width, row = static_cast<size_t>(ph) * width;
    for (int o = 0; o < s.out_c; ++o) {
        const int32_t* top = reinterpret_cast<const int32_t*>(acc) + static_cast<size_t>(o) * s.cols;
        const int32_t* bottom = top + sums;
        const bool largest = !(e.scale[o] < 0.0f);
        float* out = y + o * plane + row;
        for (int pw = 0; pw < width; ++pw) {
            const int c = 2 * pw;
            const int32_t a = ones[c] - 2 * top[c], b = ones[c + 1] - 2 * top[c + 1];
            const int32_t d = ones[s.cols + c] - 2 * bottom[c], f = ones[s.cols + c + 1] - 2 * bottom[c + 1];
            const int32_t kept = largest ? std::max(std::max(a, b), std::max(d, f)) : std::min(std::min(a, b), std::min(d, f));
            float v = (static_cast<float>(kept) * e.scale[o] + e.shift[o]) * e.post_scale[o] + e.post_shift[o];
            if (e.residual != nullptr) v = v + e.residual[o * plane + row + pw];
            out[pw] = std::min(std::max(v, e.low), e.high);
        }
    }
    if (bits != nullptr)
        sign_bits(y, s.out_c, bits->area, row, static_cast<size_t>(width), bits->one_plane, bits->half_n, bits->half_p);
#endif
}

}  // namespace SLIMKIT_ISA
}  // namespace slimkit
