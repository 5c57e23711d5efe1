// The calls into one instruction-set build (see dispatch.hpp).
#include "dispatch.hpp"

#include <stdexcept>

namespace slimkit {

// Calls `call` (a kernel and its arguments) in the namespace of the build `isa`.
#define SLIMKIT_DISPATCH(isa, call)               \
    switch (isa) {                                \
        case Isa::avx512: return avx512::call;    \
        case Isa::avx2: return avx2::call;        \
        default: return generic::call;            \
    }

int64_t pair_sum_peak_any(Isa isa, int64_t rounds, int32_t* sink) { SLIMKIT_DISPATCH(isa, pair_sum_peak(rounds, sink)) }

void pack_rows_any(Isa isa, const float* x, const Shape& s, int first, int end, uint64_t* n, uint64_t* p) {
    SLIMKIT_DISPATCH(isa, pack_rows(x, s, first, end, n, p))
}

void assemble_rows_any(Isa isa, const uint64_t* half_n, const uint64_t* half_p, const Shape& s, int first, int end,
                       uint64_t* n, uint64_t* p) {
    SLIMKIT_DISPATCH(isa, assemble_rows(half_n, half_p, s, first, end, n, p))
}

void conv_row_any(Isa isa, int variant, const uint64_t* n, const uint64_t* p, const uint64_t* w, const Epilogue& e,
                  const Shape& s, int oh, float* y, const SignBits* bits) {
    SLIMKIT_DISPATCH(isa, conv_row(variant, n, p, w, e, s, oh, y, bits))
}

void pool_row_any(Isa isa, int variant, const uint64_t* n, const uint64_t* p, const uint64_t* w, const Epilogue& e,
                  const Shape& s, int ph, float* y, const SignBits* bits) {
    SLIMKIT_DISPATCH(isa, pool_row(variant, n, p, w, e, s, ph, y, bits))
}

void sparse_segment_any(Isa isa, const float* planes, size_t plane_stride, const SparseWeights& w, int o_begin,
                        int o_end, size_t start, int length, int row_stride, float* acc) {
    SLIMKIT_DISPATCH(isa, sparse_segment(planes, plane_stride, w, o_begin, o_end, start, length, row_stride, acc))
}

void quantize_row_any(Isa isa, const float* x, int x_stride, int count, const QuantGrid& grid, int16_t* out) {
    SLIMKIT_DISPATCH(isa, quantize_row(x, x_stride, count, grid, out))
}

void quantize_group_row_any(Isa isa, const float* const* x, int count, const QuantGrid& grid, int16_t* out) {
    SLIMKIT_DISPATCH(isa, quantize_group_row(x, count, grid, out))
}

void quant_sparse_row_any(Isa isa, const int16_t* planes, const QuantBlocks& w, int o, size_t start, int length,
                          int32_t* acc) {
    SLIMKIT_DISPATCH(isa, quant_sparse_row(planes, w, o, start, length, acc))
}

void quant_epilogue_any(Isa isa, const int32_t* acc, int acc_stride, int rows, int width, float scale, float bias,
                        const float* residual, const QuantEpilogue& e, float* y, int16_t* ints) {
    SLIMKIT_DISPATCH(isa, quant_epilogue(acc, acc_stride, rows, width, scale, bias, residual, e, y, ints))
}

void interleave_group_any(Isa isa, const int16_t* const* c, size_t count, int16_t* out) {
    SLIMKIT_DISPATCH(isa, interleave_group(c, count, out))
}

void quantize_features_any(Isa isa, const float* x, int count, const QuantGrid& grid, int16_t* out,
                           size_t group_stride) {
    SLIMKIT_DISPATCH(isa, quantize_features(x, count, grid, out, group_stride))
}

void quant_linear_epilogue_any(Isa isa, const int32_t* acc, int acc_stride, int outputs, int positions,
                               const float* scale, const float* bias, const float* residual, size_t y_stride,
                               float low, float high, float* y) {
    SLIMKIT_DISPATCH(isa, quant_linear_epilogue(acc, acc_stride, outputs, positions, scale, bias, residual, y_stride,
                                                low, high, y))
}

void sparse_rows_any(Isa isa, const float* xt, int batch, const SparseWeights& w, int o_begin, int o_end, float* yt) {
    SLIMKIT_DISPATCH(isa, sparse_rows(xt, batch, w, o_begin, o_end, yt))
}

void sparse_dots_any(Isa isa, const float* x, const SparseWeights& w, int o_begin, int o_end, float* y) {
    SLIMKIT_DISPATCH(isa, sparse_dots(x, w, o_begin, o_end, y))
}

static void require_avx512(Isa isa, const char* kernel) {
    if (isa != Isa::avx512) throw std::logic_error(std::string("slimkit: ") + kernel + " exists in the avx512 build only");
}

void quantize_row_u8_any(Isa isa, const float* x, int x_stride, int count, const QuantGrid& grid, int offset,
                         uint8_t* out) {
    require_avx512(isa, "quantize_row_u8");
    avx512::quantize_row_u8(x, x_stride, count, grid, offset, out);
}

void quantize_group_row_u8_any(Isa isa, const float* const* x, int count, const QuantGrid& grid, int offset,
                               uint8_t* out) {
    require_avx512(isa, "quantize_group_row_u8");
    avx512::quantize_group_row_u8(x, count, grid, offset, out);
}

void quantize_features_u8_any(Isa isa, const float* x, int count, const QuantGrid& grid, int offset, uint8_t* out,
                              size_t group_stride) {
    require_avx512(isa, "quantize_features_u8");
    avx512::quantize_features_u8(x, count, grid, offset, out, group_stride);
}

void quant_sparse_row_u8_any(Isa isa, int variant, const uint8_t* planes, const QuantBlocks8& w, int o, size_t start,
                             int length, int32_t* acc) {
    require_avx512(isa, "quant_sparse_row_u8");
    avx512::quant_sparse_row_u8(variant, planes, w, o, start, length, acc);
}

int64_t quad_sum_peak_any(Isa isa, int variant, int64_t rounds, int32_t* sink) {
    require_avx512(isa, "quad_sum_peak");
    return avx512::quad_sum_peak(variant, rounds, sink);
}

}  // namespace slimkit
