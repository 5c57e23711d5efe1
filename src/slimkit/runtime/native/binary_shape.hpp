// The geometry of one binary conv call, shared by every instruction-set build of the kernel.
#pragma once
#include <cstdint>

namespace slimkit {

// cols and outs are out_w and out_c rounded up to a multiple of 4: packed planes are [row][word][cols] and
// packed weights [kh][word][outs], with zero words in the spare places, so SIMD loops need no tails.
struct Shape {
    int channels, height, width, kernel_h, kernel_w, stride, pad, out_c, out_h, out_w, words, cols, outs;
};

// What the kernel applies to each window sum: y = clamp(sum * scale + shift (+ residual), low, high).
// A BatchNorm after the conv is folded into scale and shift; residual (the same layout as the output, of
// this image) is null when no residual add was fused.
struct Epilogue {
    const float* scale;
    const float* shift;
    const float* residual;
    float low, high;
};

#define SLIMKIT_DECLARE_KERNELS(ns)                                                                    \
    namespace ns {                                                                                     \
    void pack_image(const float* x, const Shape& s, uint64_t* nonzero, uint64_t* positive);            \
    void conv_row(const uint64_t* nonzero, const uint64_t* positive, const uint64_t* weight_bits,      \
                  const Epilogue& e, const Shape& s, int oh, float* y);                    \
    }
SLIMKIT_DECLARE_KERNELS(avx512)
SLIMKIT_DECLARE_KERNELS(avx2)
SLIMKIT_DECLARE_KERNELS(generic)

}  // namespace slimkit
