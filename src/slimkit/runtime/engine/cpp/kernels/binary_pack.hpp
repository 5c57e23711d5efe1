// Sign bits and the packed planes of the binary convolution (binary_kernel.hpp computes on them): per-pixel sign
// bits of float tensors, and the N (non-zero) and P (positive) planes of an image, [row][word][column], where a
// kernel row's kw-shifted pixels lie side by side so that one window is `words` words. Planes are made a range of
// rows at a time, so each thread packs only the rows its output rows read (binary_conv2d.cpp).
// Compiled once per instruction set, inside namespace slimkit::<isa> (see binary_kernel.hpp).
#pragma once
#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernel_shapes.hpp"

#if defined(__AVX512VPOPCNTDQ__) && defined(__AVX512VL__)
#include <immintrin.h>
#define SLIMKIT_AVX512_POPCOUNT 1
#elif defined(__AVX2__)
#include <immintrin.h>
#define SLIMKIT_AVX2_POPCOUNT 1
#endif

namespace slimkit {
namespace SLIMKIT_ISA {

// A growing buffer kept between calls (one per thread where declared thread_local). Not std::vector: its
// out-of-line members are weak symbols shared by every object of the library, so the linker could keep the
// copy compiled for AVX-512 and an AVX2 CPU would run it (engine/build.py refuses such symbols at build time).
template <typename T>
class Scratch {
public:
    Scratch() = default;
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    ~Scratch() { std::free(data_); }

    // At least `count` elements, contents unspecified.
    T* get(size_t count) {
        if (count > size_) {
            std::free(data_);
            data_ = static_cast<T*>(std::malloc(count * sizeof(T)));
            if (data_ == nullptr) throw std::bad_alloc();
            size_ = count;
        }
        return data_;
    }

    // At least `count` elements, the first `count` set to 0.
    T* zeroed(size_t count) {
        T* data = get(count);
        std::memset(data, 0, count * sizeof(T));
        return data;
    }

private:
    T* data_ = nullptr;
    size_t size_ = 0;
};

#ifdef SLIMKIT_AVX512_POPCOUNT
// The sign bits of 16 consecutive pixels of one channel `c` (lanes `valid`), ORed into their 64-bit words:
// words[0] holds pixels 0-7, words[1] pixels 8-15 (word c / 64 of each pixel), N then P. The comparisons are
// the scalar ones of sign_bits, NaN included (NaN is non-zero, neither positive nor >= 0).
static inline void or_sign_bits(__m512 v, __mmask16 valid, int c, int one_plane, __m512i* n, __m512i* p) {
    const __m512 zero = _mm512_setzero_ps();
    const __mmask16 nonzero = one_plane ? valid : _mm512_mask_cmp_ps_mask(valid, v, zero, _CMP_NEQ_UQ);
    const __mmask16 positive = one_plane ? _mm512_mask_cmp_ps_mask(valid, v, zero, _CMP_GE_OQ)
                                         : _mm512_mask_cmp_ps_mask(valid, v, zero, _CMP_GT_OQ);
    const __m512i bit = _mm512_set1_epi64(static_cast<long long>(uint64_t{1} << (c & 63)));
    n[0] = _mm512_mask_or_epi64(n[0], static_cast<__mmask8>(nonzero), n[0], bit);
    n[1] = _mm512_mask_or_epi64(n[1], static_cast<__mmask8>(nonzero >> 8), n[1], bit);
    p[0] = _mm512_mask_or_epi64(p[0], static_cast<__mmask8>(positive), p[0], bit);
    p[1] = _mm512_mask_or_epi64(p[1], static_cast<__mmask8>(positive >> 8), p[1], bit);
}

// Stores 16 pixels' words (or_sign_bits) at `at`, lanes `valid`.
static inline void store_words(uint64_t* at, __mmask16 valid, const __m512i* words) {
    _mm512_mask_storeu_epi64(at, static_cast<__mmask8>(valid), words[0]);
    _mm512_mask_storeu_epi64(at + 8, static_cast<__mmask8>(valid >> 8), words[1]);
}
#endif

// The per-pixel sign bits of `count` pixels from `begin` of each of `channels` planes (`area` apart in x):
// word j of pixel i holds channels 64j..64j+63, in half_n (non-zero) and half_p (positive), [word][area].
// one_plane: sign(0) = +1, every pixel non-zero. Output rows of a layer that hands the next one bits come
// from binary_kernel.hpp's conv_row; float inputs from here (pack_rows).
static void sign_bits(const float* x, int channels, size_t area, size_t begin, size_t count, int one_plane,
                      uint64_t* half_n, uint64_t* half_p) {
    const int pixel_words = (channels + 63) / 64;
#ifdef SLIMKIT_AVX512_POPCOUNT
    // 16 pixels at a time, their words in registers while each channel's 16 floats are compared
    for (size_t i = 0; i < count; i += 16) {
        const __mmask16 valid = count - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (count - i)) - 1);
        for (int j = 0; j < pixel_words; ++j) {
            __m512i n[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}, p[2] = {n[0], n[0]};
            for (int c = 64 * j; c < std::min(channels, 64 * j + 64); ++c)
                or_sign_bits(_mm512_maskz_loadu_ps(valid, x + static_cast<size_t>(c) * area + begin + i), valid, c,
                             one_plane, n, p);
            store_words(half_n + j * area + begin + i, valid, n);
            store_words(half_p + j * area + begin + i, valid, p);
        }
    }
#else
    for (int j = 0; j < pixel_words; ++j) {
        std::memset(half_n + j * area + begin, 0, sizeof(uint64_t) * count);
        std::memset(half_p + j * area + begin, 0, sizeof(uint64_t) * count);
    }
    for (int c = 0; c < channels; ++c) {  // each channel plane read contiguously; branch-free, vectorises
        const float* plane = x + static_cast<size_t>(c) * area + begin;
        uint64_t* hn = half_n + static_cast<size_t>(c >> 6) * area + begin;
        uint64_t* hp = half_p + static_cast<size_t>(c >> 6) * area + begin;
        const uint64_t shift = c & 63;
        if (one_plane) {
            for (size_t i = 0; i < count; ++i) {
                hn[i] |= uint64_t{1} << shift;
                hp[i] |= static_cast<uint64_t>(plane[i] >= 0.0f) << shift;
            }
        } else {
            for (size_t i = 0; i < count; ++i) {
                hn[i] |= static_cast<uint64_t>(plane[i] != 0.0f) << shift;
                hp[i] |= static_cast<uint64_t>(plane[i] > 0.0f) << shift;
            }
        }
    }
#endif
}

// Rows [first, end) of one image's N and P planes ([height][words][cols]) from its per-pixel sign bits
// ([word][height * width], as sign_bits writes them): bit kw * channels + c of a window row's words is channel c
// of the pixel kw columns right of the window's left edge. Columns outside the image (padding, and the spare
// columns up to cols) are 0.
void assemble_rows(const uint64_t* half_n, const uint64_t* half_p, const Shape& s, int first, int end,
                   uint64_t* nonzero, uint64_t* positive) {
    const size_t area = static_cast<size_t>(s.height) * s.width;
    const int pixel_words = (s.channels + 63) / 64;
    for (int h = first; h < end; ++h) {
        uint64_t* n_row = nonzero + static_cast<size_t>(h) * s.words * s.cols;
        uint64_t* p_row = positive + static_cast<size_t>(h) * s.words * s.cols;
        std::memset(n_row, 0, sizeof(uint64_t) * s.words * s.cols);
        std::memset(p_row, 0, sizeof(uint64_t) * s.words * s.cols);
        for (int kw = 0; kw < s.kernel_w; ++kw) {
            if (s.pad - kw > s.width - 1) continue;  // every pixel of this kernel column is right padding
            // the output columns lo..hi-1, whose pixels ow * stride + kw - pad lie in the image
            const int lo = std::max(0, (s.pad - kw + s.stride - 1) / s.stride);
            const int hi = std::min(s.out_w, (s.width - 1 + s.pad - kw) / s.stride + 1);
            for (int j = 0; j < pixel_words && lo < hi; ++j) {
                const int offset = kw * s.channels + j * 64, word = offset >> 6;
                const uint64_t shift = offset & 63;
                const size_t from = static_cast<size_t>(j) * area + static_cast<size_t>(h) * s.width +
                                    static_cast<size_t>(lo * s.stride + kw - s.pad);  // pixel of column lo
                const uint64_t* pn = half_n + from;
                const uint64_t* pp = half_p + from;
                uint64_t* n = n_row + static_cast<size_t>(word) * s.cols + lo;
                uint64_t* p = p_row + static_cast<size_t>(word) * s.cols + lo;
                const int count = hi - lo;
                if (s.stride == 1) {  // contiguous: vectorises
                    for (int i = 0; i < count; ++i) {
                        n[i] |= pn[i] << shift;
                        p[i] |= pp[i] << shift;
                    }
                } else {
                    for (int i = 0; i < count; ++i) {
                        n[i] |= pn[static_cast<size_t>(i) * s.stride] << shift;
                        p[i] |= pp[static_cast<size_t>(i) * s.stride] << shift;
                    }
                }
                if (shift != 0 && word + 1 < s.words) {  // the bits that spill into the next word
                    const uint64_t back = 64 - shift;
                    for (int i = 0; i < count; ++i) {
                        n[s.cols + i] |= pn[static_cast<size_t>(i) * s.stride] >> back;
                        p[s.cols + i] |= pp[static_cast<size_t>(i) * s.stride] >> back;
                    }
                }
            }
        }
    }
}

// Rows [first, end) of one float image's N and P planes (sign_bits of those rows, then assemble_rows).
void pack_rows(const float* x, const Shape& s, int first, int end, uint64_t* nonzero, uint64_t* positive) {
    const size_t area = static_cast<size_t>(s.height) * s.width;
    thread_local Scratch<uint64_t> half_n, half_p;
    const size_t size = static_cast<size_t>((s.channels + 63) / 64) * area;
    uint64_t* n = half_n.get(size);
    uint64_t* p = half_p.get(size);
    const size_t begin = static_cast<size_t>(first) * s.width, count = static_cast<size_t>(end - first) * s.width;
    sign_bits(x, s.channels, area, begin, count, s.one_plane, n, p);
    assemble_rows(n, p, s, first, end, nonzero, positive);
}

}  // namespace SLIMKIT_ISA
}  // namespace slimkit
