// What one kernel call needs to know, shared by every instruction-set build of the kernels.
#pragma once
#include <cstddef>
#include <cstdint>

namespace slimkit {

// cols and outs are out_w and out_c rounded up to a multiple of 4: packed planes are [row][word][cols] and
// packed weights [kh][word][outs], with zero words in the spare places, so SIMD loops need no tails.
// one_plane: the sign(0) = +1 convention (binarize `zero: positive`), where every pixel is +-1, so the N
// plane only marks the padding and windows clear of it need the P plane alone.
struct Shape {
    int channels, height, width, kernel_h, kernel_w, stride, pad, out_c, out_h, out_w, words, cols, outs, one_plane;
};

// What the kernel applies to each window sum: y = clamp(sum * scale + shift (+ residual), low, high).
// A BatchNorm after the conv is folded into scale and shift; residual (the same layout as the output, of
// this image) is null when no residual add was fused. A binary layer with a fused 2x2 max pool applies
// post_scale and post_shift (a BatchNorm after the pool) to the pooled value before the residual.
struct Epilogue {
    const float* scale;
    const float* shift;
    const float* residual;
    float low, high;
    const float* post_scale;
    const float* post_shift;
};

// Where a binary layer also writes its output's sign bits for the next binary layer: per pixel, word j holds
// channels 64j..64j+63, in half_n (non-zero) and half_p (positive), each [word][area] (area = out_h * out_w);
// one_plane: sign(0) = +1.
struct SignBits {
    uint64_t* half_n;
    uint64_t* half_p;
    size_t area;
    int one_plane;
};

// A sparse layer's non-zeros in CSR over output channels; shift[o] the output's bias. For a conv, each
// channel's entries are padded with zero weights to a multiple of 4, offset is the entry's kernel tap as a
// flat input offset (kh * Wp + kw, Wp the padded width of the stride-1 phase planes) and channel its input
// plane; for a linear layer channel is the input feature and offset is unused.
struct SparseWeights {
    const int64_t* ptr;
    const int32_t* channel;
    const int32_t* offset;
    const float* value;
    const float* shift;
};

// Positions one call of quant_sparse_row's vector loop computes at a time (see its comment).
constexpr int QUANT_TILE = 32;

// An 8-bit grid with zero point 0: integers in [low, high] times step (step 0: no quantizer).
struct QuantGrid {
    float step, low, high;
};

// A sparse int8 conv's kept blocks in CSR over output channels: block e holds the int16 weights
// weights[4e..4e+3] of input channels 4g..4g+3 at one tap, and offset[e] is where that group's phase plane,
// shifted by the tap, starts in the quantized input (in int16 elements).
struct QuantBlocks {
    const int64_t* ptr;
    const int32_t* offset;
    const int16_t* weights;
};

// The same blocks for the u8 x s8 kernels (AVX-512 VNNI's vpdpbusd), whose input planes hold each integer plus
// an offset (128 for a signed grid, 0 for an unsigned one) as uint8: weights[e] is block e's 4 int8 weights as
// one int32 (the bytes vpdpbusd multiplies with one position's 4 channels), and compensation[o] is the offset
// times the sum of output channel o's weights, which the kernel subtracts (exact in int32).
struct QuantBlocks8 {
    const int64_t* ptr;
    const int32_t* offset;
    const int32_t* weights;
    const int32_t* compensation;
};

// The fused epilogue of a quantized layer: the quantizer of its output (pre), a residual add, a clamp, the
// quantizer after them (post), in the order the fake-quant graph applies them.
struct QuantEpilogue {
    QuantGrid pre;
    float low, high;
    QuantGrid post;
};

#define SLIMKIT_DECLARE_KERNELS(ns)                                                                    \
    namespace ns {                                                                                     \
    void assemble_rows(const uint64_t* half_n, const uint64_t* half_p, const Shape& s, int first, int end,  \
                       uint64_t* nonzero, uint64_t* positive);                                          \
    void pack_rows(const float* x, const Shape& s, int first, int end, uint64_t* nonzero, uint64_t* positive); \
    void conv_row(int variant, const uint64_t* nonzero, const uint64_t* positive, const uint64_t* weight_bits, \
                  const Epilogue& e, const Shape& s, int oh, float* y, const SignBits* bits);        \
    void pool_row(int variant, const uint64_t* nonzero, const uint64_t* positive, const uint64_t* weight_bits, \
                  const Epilogue& e, const Shape& s, int ph, float* y, const SignBits* bits);        \
    void sparse_segment(const float* planes, size_t plane_stride, const SparseWeights& w, int o_begin,  \
                        int o_end, size_t start, int length, int row_stride, float* acc);                \
    void sparse_rows(const float* xt, int batch, const SparseWeights& w, int o_begin, int o_end, float* yt); \
    void sparse_dots(const float* x, const SparseWeights& w, int o_begin, int o_end, float* y);      \
    void quantize_row(const float* x, int x_stride, int count, const QuantGrid& grid, int16_t* out);   \
    void quantize_group_row(const float* const* x, int count, const QuantGrid& grid, int16_t* out);      \
    void quant_sparse_row(const int16_t* planes, const QuantBlocks& w, int o, size_t start, int length,  \
                          int32_t* acc);                                                                \
    void quant_epilogue(const int32_t* acc, int acc_stride, int rows, int width, float scale, float bias, \
                        const float* residual, const QuantEpilogue& e, float* y, int16_t* ints);        \
    void interleave_group(const int16_t* const* c, size_t count, int16_t* out);                        \
    void quantize_features(const float* x, int count, const QuantGrid& grid, int16_t* out, size_t group_stride); \
    void quant_linear_epilogue(const int32_t* acc, int acc_stride, int outputs, int positions, const float* scale, \
                               const float* bias, const float* residual, size_t y_stride, float low, float high, \
                               float* y);                                                                \
    int64_t pair_sum_peak(int64_t rounds, int32_t* sink);                                              \
    }
SLIMKIT_DECLARE_KERNELS(avx512)
SLIMKIT_DECLARE_KERNELS(avx2)
SLIMKIT_DECLARE_KERNELS(generic)

// The u8 x s8 kernels, in the AVX-512 build only (variant 0: 256-bit registers, 1: 512-bit).
namespace avx512 {
void quantize_row_u8(const float* x, int x_stride, int count, const QuantGrid& grid, int offset, uint8_t* out);
void quantize_group_row_u8(const float* const* x, int count, const QuantGrid& grid, int offset, uint8_t* out);
void quantize_features_u8(const float* x, int count, const QuantGrid& grid, int offset, uint8_t* out,
                          size_t group_stride);
void quant_sparse_row_u8(int variant, const uint8_t* planes, const QuantBlocks8& w, int o, size_t start, int length,
                         int32_t* acc);
int64_t quad_sum_peak(int variant, int64_t rounds, int32_t* sink);
}  // namespace avx512

}  // namespace slimkit
