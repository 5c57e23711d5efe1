// The instruction-set dispatch: isa() reads the CPU's features once, and every *_any function (declared in
// dispatch.hpp) calls its kernel in the namespace of that level. The library tells its level through
// slimkit_isa() (engine/build.py: isa_level), so tests can check that SLIMKIT_ISA took effect.
#include <cstdlib>
#include <string>

#include "dispatch.hpp"

namespace slimkit {

// The best level this CPU runs, capped by SLIMKIT_ISA when it is set.
Isa isa() {
    static const Isa chosen = [] {
        __builtin_cpu_init();
        Isa best = Isa::generic;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) best = Isa::avx2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq") &&
            __builtin_cpu_supports("avx512vnni"))
            best = Isa::avx512;
        const char* cap = std::getenv("SLIMKIT_ISA");
        if (cap == nullptr) return best;
        const std::string want(cap);
        const Isa asked = want == "avx512" ? Isa::avx512 : want == "avx2" ? Isa::avx2 : Isa::generic;
        return asked < best ? asked : best;
    }();
    return chosen;
}

extern "C" const char* slimkit_isa() {
    switch (isa()) {
        case Isa::avx512: return "avx512";
        case Isa::avx2: return "avx2";
        default: return "generic";
    }
}

// Calls `call` (a kernel and its arguments) in the namespace of the level isa() chose.
#define SLIMKIT_DISPATCH(call)                    \
    switch (isa()) {                              \
        case Isa::avx512: return avx512::call;    \
        case Isa::avx2: return avx2::call;        \
        default: return generic::call;            \
    }

int64_t pair_sum_peak_any(int64_t rounds, int32_t* sink) { SLIMKIT_DISPATCH(pair_sum_peak(rounds, sink)) }

void pack_image_any(const float* x, const Shape& s, uint64_t* n, uint64_t* p) {
    SLIMKIT_DISPATCH(pack_image(x, s, n, p))
}

void assemble_planes_any(const uint64_t* half_n, const uint64_t* half_p, const Shape& s, uint64_t* n,
                                uint64_t* p) {
    SLIMKIT_DISPATCH(assemble_planes(half_n, half_p, s, n, p))
}

void sign_bits_any(const float* x, int channels, size_t area, size_t begin, size_t count, int one_plane,
                          uint64_t* half_n, uint64_t* half_p) {
    SLIMKIT_DISPATCH(sign_bits(x, channels, area, begin, count, one_plane, half_n, half_p))
}

void conv_row_any(const uint64_t* n, const uint64_t* p, const uint64_t* w, const Epilogue& e, const Shape& s,
                         int oh, float* y) {
    SLIMKIT_DISPATCH(conv_row(n, p, w, e, s, oh, y))
}

void sparse_segment_any(const float* planes, size_t plane_stride, const SparseWeights& w, int o_begin,
                               int o_end, size_t start, int length, int row_stride, float* acc) {
    SLIMKIT_DISPATCH(sparse_segment(planes, plane_stride, w, o_begin, o_end, start, length, row_stride, acc))
}

void quantize_row_any(const float* x, int x_stride, int count, const QuantGrid& grid, int16_t* out) {
    SLIMKIT_DISPATCH(quantize_row(x, x_stride, count, grid, out))
}

void quantize_group_row_any(const float* const* x, int count, const QuantGrid& grid, int16_t* out) {
    SLIMKIT_DISPATCH(quantize_group_row(x, count, grid, out))
}

void quant_sparse_row_any(const int16_t* planes, const QuantBlocks& w, int o, size_t start, int length,
                                 int32_t* acc) {
    SLIMKIT_DISPATCH(quant_sparse_row(planes, w, o, start, length, acc))
}

void quant_epilogue_any(const int32_t* acc, int acc_stride, int rows, int width, float scale, float bias,
                               const float* residual, const QuantEpilogue& e, float* y, int16_t* ints) {
    SLIMKIT_DISPATCH(quant_epilogue(acc, acc_stride, rows, width, scale, bias, residual, e, y, ints))
}

void interleave_group_any(const int16_t* const* c, size_t count, int16_t* out) {
    SLIMKIT_DISPATCH(interleave_group(c, count, out))
}

void sparse_rows_any(const float* xt, int batch, const SparseWeights& w, int o_begin, int o_end, float* yt) {
    SLIMKIT_DISPATCH(sparse_rows(xt, batch, w, o_begin, o_end, yt))
}

void sparse_dots_any(const float* x, const SparseWeights& w, int o_begin, int o_end, float* y) {
    SLIMKIT_DISPATCH(sparse_dots(x, w, o_begin, o_end, y))
}

}  // namespace slimkit
