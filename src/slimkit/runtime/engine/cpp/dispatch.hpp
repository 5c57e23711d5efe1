// Which instruction-set build of the kernels runs. The kernels (kernels/) are compiled once per level
// (kernels_<isa>.cpp, each in namespace slimkit::<isa>); isa() picks one level for this CPU, and each *_any
// function calls its kernel in that level's build. The operators reach the kernels only through these, so
// choosing a build is dispatch.cpp's job alone.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kernels/kernel_shapes.hpp"

namespace slimkit {

enum class Isa { generic, avx2, avx512 };

// The best level this CPU runs, capped by SLIMKIT_ISA (generic|avx2|avx512) when it is set.
Isa isa();

// Each kernel of kernels/kernel_shapes.hpp, in the build isa() chose (see there for what each computes).
void pack_image_any(const float* x, const Shape& s, uint64_t* n, uint64_t* p);
void assemble_planes_any(const uint64_t* half_n, const uint64_t* half_p, const Shape& s, uint64_t* n, uint64_t* p);
void sign_bits_any(const float* x, int channels, size_t area, size_t begin, size_t count, int one_plane,
                   uint64_t* half_n, uint64_t* half_p);
void conv_row_any(const uint64_t* n, const uint64_t* p, const uint64_t* w, const Epilogue& e, const Shape& s, int oh,
                  float* y);
void sparse_segment_any(const float* planes, size_t plane_stride, const SparseWeights& w, int o_begin, int o_end,
                        size_t start, int length, int row_stride, float* acc);
void sparse_rows_any(const float* xt, int batch, const SparseWeights& w, int o_begin, int o_end, float* yt);
void sparse_dots_any(const float* x, const SparseWeights& w, int o_begin, int o_end, float* y);
void quantize_row_any(const float* x, int x_stride, int count, const QuantGrid& grid, int16_t* out);
void quantize_group_row_any(const float* const* x, int count, const QuantGrid& grid, int16_t* out);
void quant_sparse_row_any(const int16_t* planes, const QuantBlocks& w, int o, size_t start, int length, int32_t* acc);
void quant_epilogue_any(const int32_t* acc, int acc_stride, int rows, int width, float scale, float bias,
                        const float* residual, const QuantEpilogue& e, float* y, int16_t* ints);
void interleave_group_any(const int16_t* const* c, size_t count, int16_t* out);
int64_t pair_sum_peak_any(int64_t rounds, int32_t* sink);

}  // namespace slimkit
