// Bit-packed binary convolution, exact for the training graph's sign(0) = 0 and zero padding.
// The same algorithm as slimkit/runtime/eager/binary_kernels.py (see its docstring): activations are packed
// along channels into two planes, N (non-zero) and P (positive), stored [row, word, column] per image;
// weights are the positive-bit plane [kh, word, out]; one window sums to
//     popcount(N) - 2 popcount(N & (P xor Wp)).
// This header is compiled once per instruction set (kernels_avx512.cpp, kernels_avx2.cpp, kernels_generic.cpp
// include it, each inside its own namespace slimkit::<isa>); dispatch.cpp picks one at run time.
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


// The per-pixel sign bits of `count` pixels from `begin` of each of `channels` planes (`area` apart in x):
// word j of pixel i holds channels 64j..64j+63, in half_n (non-zero) and half_p (positive), [word][area].
// one_plane: sign(0) = +1, every pixel non-zero. The producing layer's epilogue calls this on each output
// row it writes (pack_output), so the next binary layer never reads floats; pack_image calls it on images.
void sign_bits(const float* x, int channels, size_t area, size_t begin, size_t count, int one_plane,
               uint64_t* half_n, uint64_t* half_p) {
    const int pixel_words = (channels + 63) / 64;
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
}

// N and P planes of one image, [height][words][cols], from its per-pixel sign bits ([word][height * width],
// as sign_bits writes them): each kernel row's kw-shifted pixels side by side, so a window is `words` words.
// Columns outside the image (padding, and the spare columns up to cols) stay 0.
void assemble_planes(const uint64_t* half_n, const uint64_t* half_p, const Shape& s, uint64_t* nonzero,
                     uint64_t* positive) {
    const int area = s.height * s.width, pixel_words = (s.channels + 63) / 64;
    const int padded = s.width + 2 * s.pad + s.kernel_w;
    thread_local Scratch<uint64_t> pix_n_buffer, pix_p_buffer;
    const size_t pix_size = static_cast<size_t>(s.height) * pixel_words * padded;
    uint64_t* pix_n = pix_n_buffer.zeroed(pix_size);
    uint64_t* pix_p = pix_p_buffer.zeroed(pix_size);
    for (int h = 0; h < s.height; ++h)
        for (int j = 0; j < pixel_words; ++j)
            for (int w = 0; w < s.width; ++w) {
                const size_t at = (static_cast<size_t>(h) * pixel_words + j) * padded + s.pad + w;
                pix_n[at] = half_n[static_cast<size_t>(j) * area + h * s.width + w];
                pix_p[at] = half_p[static_cast<size_t>(j) * area + h * s.width + w];
            }
    std::memset(nonzero, 0, sizeof(uint64_t) * s.height * s.words * s.cols);
    std::memset(positive, 0, sizeof(uint64_t) * s.height * s.words * s.cols);
    for (int h = 0; h < s.height; ++h)
        for (int kw = 0; kw < s.kernel_w; ++kw)
            for (int j = 0; j < pixel_words; ++j) {
                const int offset = kw * s.channels + j * 64, word = offset >> 6;
                const uint64_t shift = offset & 63;
                const uint64_t* pn = pix_n + (static_cast<size_t>(h) * pixel_words + j) * padded + kw;
                const uint64_t* pp = pix_p + (static_cast<size_t>(h) * pixel_words + j) * padded + kw;
                uint64_t* n = nonzero + (static_cast<size_t>(h) * s.words + word) * s.cols;
                uint64_t* p = positive + (static_cast<size_t>(h) * s.words + word) * s.cols;
                for (int ow = 0; ow < s.out_w; ++ow) {
                    n[ow] |= pn[ow * s.stride] << shift;
                    p[ow] |= pp[ow * s.stride] << shift;
                }
                if (shift != 0 && word + 1 < s.words) {
                    const uint64_t back = 64 - shift;
                    for (int ow = 0; ow < s.out_w; ++ow) {
                        n[s.cols + ow] |= pn[ow * s.stride] >> back;
                        p[s.cols + ow] |= pp[ow * s.stride] >> back;
                    }
                }
            }
}

// N and P planes of one float image (sign_bits, then assemble_planes).
void pack_image(const float* x, const Shape& s, uint64_t* nonzero, uint64_t* positive) {
    const size_t area = static_cast<size_t>(s.height) * s.width;
    thread_local Scratch<uint64_t> half_n, half_p;
    const size_t size = static_cast<size_t>((s.channels + 63) / 64) * area;
    uint64_t* n = half_n.get(size);
    uint64_t* p = half_p.get(size);
    sign_bits(x, s.channels, area, 0, area, s.one_plane, n, p);
    assemble_planes(n, p, s, nonzero, positive);
}

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

#ifdef SLIMKIT_AVX512_POPCOUNT
// O x V blocks of sums over `steps` words with AVX-512 VPOPCNTDQ: output channels o..o+O-1 against V vectors of
// Lanes consecutive columns (Lanes 4: 256-bit registers, 8: 512-bit). Each step loads the columns' N and P words
// once for all O channels and broadcasts each channel's weight word; the bit counts add up in 64-bit lanes.
// Which width wins is the CPU's business (Zen 4 splits 512-bit operations in two): the kernel tuner times both.
template <int Lanes>
struct Words;

template <>
struct Words<4> {
    using V = __m256i;
    static V load(const uint64_t* at) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at)); }
    static V broadcast(uint64_t w) { return _mm256_set1_epi64x(static_cast<long long>(w)); }
    static V zero() { return _mm256_setzero_si256(); }
    static V add_count(V total, V bits) { return _mm256_add_epi64(total, _mm256_popcnt_epi64(bits)); }
    static V masked_xor(V n, V p, V w) { return _mm256_ternarylogic_epi64(n, p, w, 0x60); }  // n & (p ^ w)
    static V exclusive(V p, V w) { return _mm256_xor_si256(p, w); }
    static void store(uint32_t* at, V total) {
        _mm256_mask_cvtepi64_storeu_epi32(at, 0xF, total);  // the sums fit 32 bits
    }
};

template <>
struct Words<8> {
    using V = __m512i;
    static V load(const uint64_t* at) { return _mm512_loadu_si512(at); }
    static V broadcast(uint64_t w) { return _mm512_set1_epi64(static_cast<long long>(w)); }
    static V zero() { return _mm512_setzero_si512(); }
    static V add_count(V total, V bits) { return _mm512_add_epi64(total, _mm512_popcnt_epi64(bits)); }
    static V masked_xor(V n, V p, V w) { return _mm512_ternarylogic_epi64(n, p, w, 0x60); }
    static V exclusive(V p, V w) { return _mm512_xor_si512(p, w); }
    static void store(uint32_t* at, V total) {
        _mm512_mask_cvtepi64_storeu_epi32(at, 0xFF, total);
    }
};

template <int Lanes, int O, int V, bool OnePlane>
static inline void popcount_block(const uint64_t* const* n_at, const uint64_t* const* p_at,
                                  const uint64_t* const* w_at, int steps, int o, int first, uint32_t* acc, int cols) {
    using W = Words<Lanes>;
    typename W::V total[O][V];
    for (int i = 0; i < O; ++i)
        for (int v = 0; v < V; ++v) total[i][v] = W::zero();
    for (int t = 0; t < steps; ++t) {
        typename W::V w[O];
        for (int i = 0; i < O; ++i) w[i] = W::broadcast(w_at[t][o + i]);
        for (int v = 0; v < V; ++v) {
            const auto p = W::load(p_at[t] + first + Lanes * v);
            if (OnePlane) {
                for (int i = 0; i < O; ++i) total[i][v] = W::add_count(total[i][v], W::exclusive(p, w[i]));
            } else {
                const auto n = W::load(n_at[t] + first + Lanes * v);
                for (int i = 0; i < O; ++i) total[i][v] = W::add_count(total[i][v], W::masked_xor(n, p, w[i]));
            }
        }
    }
    for (int i = 0; i < O; ++i)
        for (int v = 0; v < V; ++v) W::store(acc + static_cast<size_t>(o + i) * cols + first + Lanes * v, total[i][v]);
}
#endif

#ifdef SLIMKIT_AVX512_POPCOUNT
// Every output channel's sums for one row, in blocks of 4 channels x 16 columns: variant 0 uses 256-bit
// registers (4 x 4 of them), variant 1 512-bit ones (4 x 2); the last columns (a multiple of 4) go 4 at a time.
template <bool OnePlane>
static void popcount_sums(int variant, const uint64_t* const* n_at, const uint64_t* const* p_at,
                          const uint64_t* const* w_at, int steps, const Shape& s, uint32_t* acc) {
    const int whole = s.cols / 16 * 16;
    for (int o = 0; o < s.outs; o += 4) {  // outs is a multiple of 4 (spare channels have zero weights)
        for (int first = 0; first < whole; first += 16) {
            if (variant == 1)
                popcount_block<8, 4, 2, OnePlane>(n_at, p_at, w_at, steps, o, first, acc, s.cols);
            else
                popcount_block<4, 4, 4, OnePlane>(n_at, p_at, w_at, steps, o, first, acc, s.cols);
        }
        for (int first = whole; first < s.cols; first += 4)
            popcount_block<4, 4, 1, OnePlane>(n_at, p_at, w_at, steps, o, first, acc, s.cols);
    }
}
#endif

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
#if defined(SLIMKIT_AVX512_POPCOUNT)
    // Hand-written: GCC's own vectorisation of the plain loops below ran 2.3-2.6x slower than the AVX2 build on
    // Zen 4. Which register width wins is measured per CPU (variant 0: 256-bit, 1: 512-bit).
    if (s.one_plane)
        popcount_sums<true>(variant, n_at, p_at, w_at, steps, s, acc);
    else
        popcount_sums<false>(variant, n_at, p_at, w_at, steps, s, acc);
#elif defined(SLIMKIT_AVX2_POPCOUNT)
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

// One output row (image b's packed planes, output row oh) into y (channel stride out_h * out_w): the window
// sums, then the fused epilogue y = clamp(sum * scale[o] + shift[o] (+ residual), low, high).
void conv_row(int variant, const uint64_t* nonzero, const uint64_t* positive, const uint64_t* weight_bits, const Epilogue& e,
              const Shape& s, int oh, float* y) {
    thread_local Scratch<uint32_t> acc_buffer;
    thread_local Scratch<int32_t> ones_buffer;
    uint32_t* acc = acc_buffer.get(static_cast<size_t>(s.outs) * s.cols);
    int32_t* ones = ones_buffer.get(s.cols);
    window_sums(variant, nonzero, positive, weight_bits, s, oh, acc, ones);
    if (s.one_plane) fix_border_columns(nonzero, positive, weight_bits, s, oh, acc);
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
}

}  // namespace SLIMKIT_ISA
}  // namespace slimkit
