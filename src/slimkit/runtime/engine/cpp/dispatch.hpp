// Calls into one instruction-set build of the kernels. The kernels (kernels/) are compiled once per level
// (kernels_<isa>.cpp, each in namespace slimkit::<isa>); each *_any function takes the build to run as its first
// argument and calls its kernel there. Which build (and which variant within it) an operator runs is not
// decided here: kernel_tuner.hpp chooses by timing them on the CPU.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernel_tuner.hpp"
#include "kernels/kernel_shapes.hpp"

namespace slimkit {

// Each kernel of kernels/kernel_shapes.hpp, in the build `isa` (see there for what each computes).
void pack_rows_any(Isa isa, const float* x, const Shape& s, int first, int end, uint64_t* n, uint64_t* p);
void assemble_rows_any(Isa isa, const uint64_t* half_n, const uint64_t* half_p, const Shape& s, int first, int end,
                       uint64_t* n, uint64_t* p);
void conv_row_any(Isa isa, int variant, const uint64_t* n, const uint64_t* p, const uint64_t* w, const Epilogue& e,
                  const Shape& s, int oh, float* y, const SignBits* bits);
void pool_row_any(Isa isa, int variant, const uint64_t* n, const uint64_t* p, const uint64_t* w, const Epilogue& e,
                  const Shape& s, int ph, float* y, const SignBits* bits);
void sparse_segment_any(Isa isa, const float* planes, size_t plane_stride, const SparseWeights& w, int o_begin,
                        int o_end, size_t start, int length, int row_stride, float* acc);
void sparse_rows_any(Isa isa, const float* xt, int batch, const SparseWeights& w, int o_begin, int o_end, float* yt);
void sparse_dots_any(Isa isa, const float* x, const SparseWeights& w, int o_begin, int o_end, float* y);
void quantize_row_any(Isa isa, const float* x, int x_stride, int count, const QuantGrid& grid, int16_t* out);
void quantize_group_row_any(Isa isa, const float* const* x, int count, const QuantGrid& grid, int16_t* out);
void quant_sparse_row_any(Isa isa, const int16_t* planes, const QuantBlocks& w, int o, size_t start, int length,
                          int32_t* acc);
void quant_epilogue_any(Isa isa, const int32_t* acc, int acc_stride, int rows, int width, float scale, float bias,
                        const float* residual, const QuantEpilogue& e, float* y, int16_t* ints);
void interleave_group_any(Isa isa, const int16_t* const* c, size_t count, int16_t* out);
void quantize_features_any(Isa isa, const float* x, int count, const QuantGrid& grid, int16_t* out,
                           size_t group_stride);
void quant_linear_epilogue_any(Isa isa, const int32_t* acc, int acc_stride, int outputs, int positions,
                               const float* scale, const float* bias, const float* residual, size_t y_stride,
                               float low, float high, float* y);
int64_t pair_sum_peak_any(Isa isa, int64_t rounds, int32_t* sink);

}  // namespace slimkit

namespace slimkit {

// The u8 x s8 kernels (kernels/quant_u8_kernel.hpp), which only the AVX-512 build has: any other `isa` is a
// programming error, thrown as such.
void quantize_row_u8_any(Isa isa, const float* x, int x_stride, int count, const QuantGrid& grid, int offset,
                         uint8_t* out);
void quantize_group_row_u8_any(Isa isa, const float* const* x, int count, const QuantGrid& grid, int offset,
                               uint8_t* out);
void quantize_features_u8_any(Isa isa, const float* x, int count, const QuantGrid& grid, int offset, uint8_t* out,
                              size_t group_stride);
void quant_sparse_row_u8_any(Isa isa, int variant, const uint8_t* planes, const QuantBlocks8& w, int o, size_t start,
                             int length, int32_t* acc);
int64_t quad_sum_peak_any(Isa isa, int variant, int64_t rounds, int32_t* sink);

}  // namespace slimkit
