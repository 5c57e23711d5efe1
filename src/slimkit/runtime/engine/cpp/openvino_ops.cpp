// slimkit's operators for OpenVINO: a shared library a user loads with core.add_extension(path), after
// which OpenVINO reads slimkit's exported ONNX and IR models. The kernels are compiled once per
// instruction set and picked at run time from the CPU's features (see isa()), so one build serves any
// x86-64 machine; SLIMKIT_ISA=generic|avx2|avx512 forces a lower level (tests compare every level).
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>
#include <openvino/op/op.hpp>

#include "kernel_shapes.hpp"

namespace slimkit {

enum class Isa { generic, avx2, avx512 };

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

static int64_t pair_sum_peak_any(int64_t rounds, int32_t* sink) { SLIMKIT_DISPATCH(pair_sum_peak(rounds, sink)) }

// The int8 peak of the int8 operator's inner step on this CPU: multiplies per second over `threads` threads
// running pair_sum_peak at once for about `seconds`; the figure the operator's throughput is a fraction of.
extern "C" double slimkit_int8_peak(int threads, double seconds) {
    std::vector<int32_t> sinks(static_cast<size_t>(threads), 0);
    std::vector<int64_t> done(static_cast<size_t>(threads), 0);
    const auto started = std::chrono::steady_clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t)
        workers.emplace_back([&, t] {
            while (std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count() < seconds)
                done[t] += pair_sum_peak_any(1 << 16, &sinks[t]);
        });
    for (auto& worker : workers) worker.join();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    int64_t total = 0;
    for (int t = 0; t < threads; ++t) total += done[t];
    return static_cast<double>(total) / elapsed;
}

static void pack_image_any(const float* x, const Shape& s, uint64_t* n, uint64_t* p) {
    SLIMKIT_DISPATCH(pack_image(x, s, n, p))
}

static void assemble_planes_any(const uint64_t* half_n, const uint64_t* half_p, const Shape& s, uint64_t* n,
                                uint64_t* p) {
    SLIMKIT_DISPATCH(assemble_planes(half_n, half_p, s, n, p))
}

static void sign_bits_any(const float* x, int channels, size_t area, size_t begin, size_t count, int one_plane,
                          uint64_t* half_n, uint64_t* half_p) {
    SLIMKIT_DISPATCH(sign_bits(x, channels, area, begin, count, one_plane, half_n, half_p))
}

static void conv_row_any(const uint64_t* n, const uint64_t* p, const uint64_t* w, const Epilogue& e, const Shape& s,
                         int oh, float* y) {
    SLIMKIT_DISPATCH(conv_row(n, p, w, e, s, oh, y))
}

static void sparse_segment_any(const float* planes, size_t plane_stride, const SparseWeights& w, int o_begin,
                               int o_end, size_t start, int length, int row_stride, float* acc) {
    SLIMKIT_DISPATCH(sparse_segment(planes, plane_stride, w, o_begin, o_end, start, length, row_stride, acc))
}

static void quantize_row_any(const float* x, int x_stride, int count, const QuantGrid& grid, int16_t* out) {
    SLIMKIT_DISPATCH(quantize_row(x, x_stride, count, grid, out))
}

static void quantize_group_row_any(const float* const* x, int count, const QuantGrid& grid, int16_t* out) {
    SLIMKIT_DISPATCH(quantize_group_row(x, count, grid, out))
}

static void quant_sparse_row_any(const int16_t* planes, const QuantBlocks& w, int o, size_t start, int length,
                                 int32_t* acc) {
    SLIMKIT_DISPATCH(quant_sparse_row(planes, w, o, start, length, acc))
}

static void quant_epilogue_any(const int32_t* acc, int acc_stride, int rows, int width, float scale, float bias,
                               const float* residual, const QuantEpilogue& e, float* y, int16_t* ints) {
    SLIMKIT_DISPATCH(quant_epilogue(acc, acc_stride, rows, width, scale, bias, residual, e, y, ints))
}

static void interleave_group_any(const int16_t* const* c, size_t count, int16_t* out) {
    SLIMKIT_DISPATCH(interleave_group(c, count, out))
}

static void sparse_rows_any(const float* xt, int batch, const SparseWeights& w, int o_begin, int o_end, float* yt) {
    SLIMKIT_DISPATCH(sparse_rows(xt, batch, w, o_begin, o_end, yt))
}

static void sparse_dots_any(const float* x, const SparseWeights& w, int o_begin, int o_end, float* y) {
    SLIMKIT_DISPATCH(sparse_dots(x, w, o_begin, o_end, y))
}

// A per-thread buffer of at least `count` elements, kept between calls: a fresh multi-megabyte allocation
// per call comes from mmap and page-faults on every first touch, which cost as much as a small layer's
// compute. One buffer per (type, slot) and thread; OpenVINO runs each inference's nodes on one thread.
template <typename T, int Slot>
static T* scratch(size_t count) {
    thread_local std::vector<T> buffer;
    if (buffer.size() < count) buffer.resize(count);
    return buffer.data();
}

// The first input column (or row) v with (v + pad) % stride == phase: where a stride phase plane starts.
static int first_in_phase(int phase, int pad, int stride) { return ((phase - pad) % stride + stride) % stride; }

// The ptr input as int64: OpenVINO's CPU plugin may hand an i64 constant over as i32.
static void read_ptr(const ov::Tensor& ptr, std::vector<int64_t>& out) {
    out.resize(ptr.get_shape()[0]);
    for (size_t i = 0; i < out.size(); ++i)
        out[i] = ptr.get_element_type() == ov::element::i64 ? ptr.data<const int64_t>()[i] : ptr.data<const int32_t>()[i];
}

// What every slimkit operator shares: the fused epilogue's attributes (clamp on/off and its bounds; a
// residual is an extra last input) and copying them into a clone.
class FusedEpilogue : public ov::op::Op {
public:
    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("clamp", clamp_);
        visitor.on_attribute("low", low_);
        visitor.on_attribute("high", high_);
        return true;
    }

    bool has_evaluate() const override { return true; }

protected:
    template <typename Op>
    std::shared_ptr<ov::Node> clone_as(const ov::OutputVector& args) const {
        auto copy = std::make_shared<Op>();
        copy->set_arguments(args);
        copy->copy_attributes(*this);
        copy->constructor_validate_and_infer_types();
        return copy;
    }

    // An operator with attributes of its own extends this (its clone's type is its own).
    virtual void copy_attributes(const FusedEpilogue& other) {
        clamp_ = other.clamp_;
        low_ = other.low_;
        high_ = other.high_;
    }

    float low() const { return clamp_ ? low_ : -std::numeric_limits<float>::infinity(); }
    float high() const { return clamp_ ? high_ : std::numeric_limits<float>::infinity(); }

    int64_t clamp_ = 0;
    float low_ = 0.0f;
    float high_ = 0.0f;
};

// What the two conv operators add: square stride and padding, and the [B, O, OH, OW] output shape.
class FusedConv : public FusedEpilogue {
public:
    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("stride", stride_);
        visitor.on_attribute("pad", pad_);
        return FusedEpilogue::visit_attributes(visitor);
    }

protected:
    // `skip`: extra axes before the input's spatial ones (1 for packed bits [B, 2, words, H, W]).
    void infer_output(const ov::Dimension& out_channels, const ov::Dimension& kernel_h, const ov::Dimension& kernel_w,
                      int skip = 0) {
        const auto& x = get_input_partial_shape(0);
        ov::PartialShape out = ov::PartialShape::dynamic(4);
        if (x.rank().is_static()) {
            out[0] = x[0];
            out[1] = out_channels;
            const ov::Dimension kernel[2] = {kernel_h, kernel_w};
            for (int axis = 2; axis < 4; ++axis)
                if (x[axis + skip].is_static() && kernel[axis - 2].is_static())
                    out[axis] = (x[axis + skip].get_length() + 2 * pad_ - kernel[axis - 2].get_length()) / stride_ + 1;
        }
        set_output_type(0, ov::element::f32, out);
    }

    void copy_attributes(const FusedEpilogue& other) override {
        FusedEpilogue::copy_attributes(other);
        stride_ = static_cast<const FusedConv&>(other).stride_;
        pad_ = static_cast<const FusedConv&>(other).pad_;
    }

    int64_t stride_ = 1;
    int64_t pad_ = 0;
};

// y = clamp(conv(sign(x), W) * scale + shift (+ residual), low, high) for +-1 weights W, with sign(0) = 0 and
// zero padding, as the training graph's BinaryConv2d computes its sums (exactly). The epilogue is what the
// exporter fused: the layer's own scale and bias, a BatchNorm folded into them, a residual add, a clamp
// (ReLU, hardtanh). Inputs: x [B, C, H, W] f32, W [O, C, KH, KW] f32 (+-1), scale [O], shift [O], and
// optionally residual [B, O, OH, OW]. Attributes: stride, pad (square); clamp (0/1), low, high; one_plane
// (1: sign(0) = +1, so a pixel is never 0 and windows clear of the padding need one bit plane).
// Packed links between binary layers: pack_output (0: none; 1 or 2: also write y's sign bits under sign(0) = 0
// or +1, as output 1, i64 [B, 2, ceil(O / 64), OH, OW], the non-zero plane then the positive plane, channel
// c at bit c % 64 of word c / 64) and packed_input (1: input 0 is such bits, [B, 2, words, H, W], so this layer
// reads no floats and skips the sign pass; its channel count comes from the weights).
class BinaryConv2d : public FusedConv {
public:
    OPENVINO_OP("BinaryConv2d", "slimkit");

    BinaryConv2d() = default;

    void validate_and_infer_types() override {
        const auto& w = get_input_partial_shape(1);
        const bool known = w.rank().is_static();
        const ov::Dimension any = ov::Dimension::dynamic();
        infer_output(known ? w[0] : any, known ? w[2] : any, known ? w[3] : any, packed_input_ ? 1 : 0);
        if (pack_output_ != 0) {
            ov::PartialShape bits = ov::PartialShape::dynamic(5);
            const ov::PartialShape y = get_output_partial_shape(0);
            bits[0] = y[0];
            bits[1] = 2;
            bits[2] = known && w[0].is_static() ? ov::Dimension((w[0].get_length() + 63) / 64) : any;
            bits[3] = y[2];
            bits[4] = y[3];
            set_output_type(1, ov::element::i64, bits);
        }
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return clone_as<BinaryConv2d>(args);
    }

    void copy_attributes(const FusedEpilogue& other) override {
        FusedConv::copy_attributes(other);
        const auto& same = static_cast<const BinaryConv2d&>(other);
        one_plane_ = same.one_plane_;
        pack_output_ = same.pack_output_;
        packed_input_ = same.packed_input_;
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("one_plane", one_plane_);
        visitor.on_attribute("pack_output", pack_output_);
        visitor.on_attribute("packed_input", packed_input_);
        return FusedConv::visit_attributes(visitor);
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& xs = inputs[0].get_shape();
        const auto& ws = inputs[1].get_shape();
        const int spatial = packed_input_ ? 3 : 2;  // bits are [B, 2, words, H, W]
        Shape s{};
        s.channels = static_cast<int>(ws[1]);
        s.height = static_cast<int>(xs[spatial]);
        s.width = static_cast<int>(xs[spatial + 1]);
        s.out_c = static_cast<int>(ws[0]);
        s.kernel_h = static_cast<int>(ws[2]);
        s.kernel_w = static_cast<int>(ws[3]);
        s.stride = static_cast<int>(stride_);
        s.pad = static_cast<int>(pad_);
        s.out_h = (s.height + 2 * s.pad - s.kernel_h) / s.stride + 1;
        s.out_w = (s.width + 2 * s.pad - s.kernel_w) / s.stride + 1;
        s.words = (s.kernel_w * s.channels + 63) / 64;
        s.cols = (s.out_w + 3) / 4 * 4;
        s.outs = (s.out_c + 3) / 4 * 4;
        s.one_plane = static_cast<int>(one_plane_);
        const int pixel_words = (s.channels + 63) / 64;
        const size_t in_channels = packed_input_ ? 2 * xs[2] : xs[1];
        if (packed_input_ ? xs[1] != 2 || static_cast<int>(xs[2]) != pixel_words : static_cast<int>(xs[1]) != s.channels)
            throw std::runtime_error("slimkit BinaryConv2d: the input's shape does not fit weights of " +
                                     std::to_string(s.channels) + " channels");
        if (s.kernel_h * s.words > 16 * 64)
            throw std::runtime_error("slimkit BinaryConv2d: kernel rows x words per row exceeds 1024");
        const size_t batch = xs[0];
        outputs[0].set_shape({batch, static_cast<size_t>(s.out_c), static_cast<size_t>(s.out_h),
                              static_cast<size_t>(s.out_w)});
        const size_t out_area = static_cast<size_t>(s.out_h) * s.out_w, out_words = (s.out_c + 63) / 64;
        uint64_t* bits = nullptr;
        if (pack_output_ != 0) {
            outputs[1].set_shape({batch, 2, out_words, static_cast<size_t>(s.out_h), static_cast<size_t>(s.out_w)});
            bits = reinterpret_cast<uint64_t*>(outputs[1].data<int64_t>());
        }
        const uint64_t* wbits = packed_weights(inputs[1], s);
        const float* residual = inputs.size() > 4 ? inputs[4].data<const float>() : nullptr;
        Epilogue e{inputs[2].data<const float>(), inputs[3].data<const float>(), nullptr, low(), high()};
        float* y = outputs[0].data<float>();
        const size_t plane = static_cast<size_t>(s.height) * s.words * s.cols;
        uint64_t* nonzero = scratch<uint64_t, 0>(batch * plane);  // pack_image / assemble_planes fill them
        uint64_t* positive = scratch<uint64_t, 1>(batch * plane);
        const size_t image_in = in_channels * s.height * s.width;
        const size_t image_out = static_cast<size_t>(s.out_c) * out_area;
        ov::parallel_for(batch, [&](size_t b) {
            if (packed_input_) {
                const uint64_t* half = reinterpret_cast<const uint64_t*>(inputs[0].data<const int64_t>()) + b * image_in;
                assemble_planes_any(half, half + image_in / 2, s, nonzero + b * plane, positive + b * plane);
            } else {
                pack_image_any(inputs[0].data<const float>() + b * image_in, s, nonzero + b * plane, positive + b * plane);
            }
        });
        const int bits_one_plane = pack_output_ == 2 ? 1 : 0;
        ov::parallel_for(batch * s.out_h, [&](size_t row) {
            const size_t b = row / s.out_h, oh = row % s.out_h;
            Epilogue image = e;
            if (residual != nullptr) image.residual = residual + b * image_out;
            conv_row_any(nonzero + b * plane, positive + b * plane, wbits, image, s, static_cast<int>(oh),
                         y + b * image_out);
            if (bits != nullptr) {  // this row's sign bits for the next binary layer, while the row is in cache
                uint64_t* half = bits + b * 2 * out_words * out_area;
                sign_bits_any(y + b * image_out, s.out_c, out_area, oh * s.out_w, s.out_w, bits_one_plane, half,
                              half + out_words * out_area);
            }
        });
        return true;
    }

private:
    // Positive-bit plane of the +-1 weights, [kh, word, outs] (kw-major, channel-minor bits per kernel row),
    // packed on the first call and kept while the weight tensor stays the same.
    const uint64_t* packed_weights(const ov::Tensor& weight, const Shape& s) const {
        std::lock_guard<std::mutex> lock(mutex_);
        const float* w = weight.data<const float>();
        if (w == packed_from_ && !packed_.empty()) return packed_.data();
        std::vector<uint64_t> bits(static_cast<size_t>(s.kernel_h) * s.words * s.outs, 0);
        for (int o = 0; o < s.out_c; ++o)
            for (int c = 0; c < s.channels; ++c)
                for (int kh = 0; kh < s.kernel_h; ++kh)
                    for (int kw = 0; kw < s.kernel_w; ++kw) {
                        const float value = w[((static_cast<size_t>(o) * s.channels + c) * s.kernel_h + kh) *
                                              s.kernel_w + kw];
                        if (value != 1.0f && value != -1.0f)
                            throw std::runtime_error("slimkit BinaryConv2d: weights must be +-1");
                        if (value > 0) {
                            const int bit = kw * s.channels + c;
                            bits[(static_cast<size_t>(kh) * s.words + (bit >> 6)) * s.outs + o] |=
                                uint64_t{1} << (bit & 63);
                        }
                    }
        packed_.swap(bits);
        packed_from_ = w;
        return packed_.data();
    }

    int64_t one_plane_ = 0;  // 1: sign(0) = +1 (binarize zero: positive)
    int64_t pack_output_ = 0;  // 1, 2: also write y's sign bits under sign(0) = 0, +1
    int64_t packed_input_ = 0;  // 1: input 0 is a BinaryConv2d's sign bits
    mutable std::mutex mutex_;
    mutable std::vector<uint64_t> packed_;
    mutable const float* packed_from_ = nullptr;
};


// What the sparse conv operators add: the kernel size as attributes (their weights are not a dense tensor)
// and the output channel count from the CSR ptr input (`ptr_input`, [O + 1]).
template <int PtrInput>
class SparseKernelConv : public FusedConv {
public:
    void validate_and_infer_types() override {
        const auto& ptr = get_input_partial_shape(PtrInput);
        const ov::Dimension out = ptr.rank().is_static() && ptr[0].is_static()
                                      ? ov::Dimension(ptr[0].get_length() - 1) : ov::Dimension::dynamic();
        infer_output(out, ov::Dimension(kernel_h_), ov::Dimension(kernel_w_));
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("kernel_h", kernel_h_);
        visitor.on_attribute("kernel_w", kernel_w_);
        return FusedConv::visit_attributes(visitor);
    }

    void copy_attributes(const FusedEpilogue& other) override {
        FusedConv::copy_attributes(other);
        kernel_h_ = static_cast<const SparseKernelConv&>(other).kernel_h_;
        kernel_w_ = static_cast<const SparseKernelConv&>(other).kernel_w_;
    }

protected:
    // A call's sizes; the input is read as the stride x stride phases of its zero-padded planes, each a
    // stride-1 plane of hq x wq (so a strided conv computes no output it drops).
    struct Geometry {
        size_t batch;
        int channels, height, width, stride, pad, kernel_h, kernel_w, out_c, out_h, out_w, hq, wq;
    };

    Geometry geometry(const ov::TensorVector& inputs) const {
        const auto& xs = inputs[0].get_shape();
        Geometry g{xs[0], static_cast<int>(xs[1]), static_cast<int>(xs[2]), static_cast<int>(xs[3]),
                   static_cast<int>(stride_), static_cast<int>(pad_), static_cast<int>(kernel_h_),
                   static_cast<int>(kernel_w_), static_cast<int>(inputs[PtrInput].get_shape()[0]) - 1, 0, 0, 0, 0};
        const int hp = g.height + 2 * g.pad, wp = g.width + 2 * g.pad;
        g.out_h = (hp - g.kernel_h) / g.stride + 1;
        g.out_w = (wp - g.kernel_w) / g.stride + 1;
        g.hq = (hp + g.stride - 1) / g.stride;
        g.wq = (wp + g.stride - 1) / g.stride;
        return g;
    }

    int64_t kernel_h_ = 1;
    int64_t kernel_w_ = 1;
};

// y = clamp(conv(x, W) + shift (+ residual), low, high) for a sparse W given as CSR over output channels:
// value, channel (input channel), tap (kh * KW + kw) per entry, each channel's entries padded with zeros to
// a multiple of 4, and ptr [O + 1]. A BatchNorm after the conv is folded into the values and shift by the
// exporter. Inputs: x [B, C, H, W] f32, value f32, channel i32, tap i32, ptr i64, shift [O] f32, optionally
// residual [B, O, OH, OW]. Attributes: kernel_h, kernel_w, stride, pad, clamp, low, high.
class SparseConv2d : public SparseKernelConv<4> {
public:
    OPENVINO_OP("SparseConv2d", "slimkit");

    SparseConv2d() = default;

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return clone_as<SparseConv2d>(args);
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto [batch, channels, height, width, stride, pad, kh, kw, out_c, out_h, out_w, hq, wq] = geometry(inputs);
        if (inputs[2].get_element_type() != ov::element::i32 || inputs[3].get_element_type() != ov::element::i32)
            throw std::runtime_error("slimkit SparseConv2d: channel and tap must be int32");
        const int planes_count = channels * stride * stride;
        const size_t image = static_cast<size_t>(hq) * wq, plane_stride = batch * image + wq;  // + a spare row
        outputs[0].set_shape({batch, static_cast<size_t>(out_c), static_cast<size_t>(out_h), static_cast<size_t>(out_w)});
        const SparseWeights w = weights(inputs, channels, wq);
        const float* x = inputs[0].data<const float>();
        const float* residual = inputs.size() > 6 ? inputs[6].data<const float>() : nullptr;
        float* y = outputs[0].data<float>();

        float* planes = scratch<float, 0>(static_cast<size_t>(planes_count) * plane_stride);
        std::fill(planes, planes + static_cast<size_t>(planes_count) * plane_stride, 0.0f);  // the padding
        // where input column v lands: phase plane pw (as an offset in planes) and column j of it, once per call
        std::vector<size_t> column_at(width);
        for (int v = 0; v < width; ++v)
            column_at[v] = static_cast<size_t>((v + pad) % stride) * plane_stride + (v + pad) / stride;
        ov::parallel_for(static_cast<size_t>(channels) * batch, [&](size_t item) {
            const size_t c = item / batch, b = item % batch;
            const float* src = x + (b * channels + c) * height * width;
            for (int h = 0; h < height; ++h) {
                const int ph = (h + pad) % stride, i = (h + pad) / stride;
                float* row = planes + (c * stride * stride + ph * stride) * plane_stride + b * image +
                             static_cast<size_t>(i) * wq;
                const float* in = src + static_cast<size_t>(h) * width;
                if (stride == 1) {
                    std::memcpy(row + pad, in, sizeof(float) * width);
                } else {
                    for (int v = 0; v < width; ++v) row[column_at[v]] = in[v];
                }
            }
        });
        const size_t span = (batch - 1) * image + static_cast<size_t>(out_h - 1) * wq + out_w;
        // segments short enough that every plane's slice of one stays in L2 (64 Ki floats in all)
        const int segment = static_cast<int>(std::min<size_t>(1024, std::max<size_t>(64, 65536 / planes_count)));
        const size_t segments = (span + segment - 1) / segment;
        const int block = 16, blocks = (out_c + block - 1) / block;
        const size_t row_stride = segments * segment;
        float* flat = scratch<float, 1>(static_cast<size_t>(out_c) * row_stride);  // every read is written first
        ov::parallel_for(segments * blocks, [&](size_t item) {
            const size_t seg = item / blocks;
            const int first = static_cast<int>(item % blocks) * block;
            const size_t start = seg * segment;
            const int length = static_cast<int>(std::min<size_t>(segment, span - start));
            sparse_segment_any(planes, plane_stride, w, first, std::min(out_c, first + block), start, length,
                               static_cast<int>(row_stride), flat + static_cast<size_t>(first) * row_stride + start);
        });
        const float lo = low(), hi = high();
        ov::parallel_for(batch * out_c, [&](size_t item) {
            const size_t b = item / out_c, o = item % out_c;
            for (int oh = 0; oh < out_h; ++oh) {
                const float* src = flat + o * row_stride + b * image + static_cast<size_t>(oh) * wq;
                const size_t at = ((b * out_c + o) * out_h + oh) * out_w;
                float* row = y + at;
                for (int ow = 0; ow < out_w; ++ow) row[ow] = src[ow];
                if (residual != nullptr)
                    for (int ow = 0; ow < out_w; ++ow) row[ow] += residual[at + ow];
                for (int ow = 0; ow < out_w; ++ow) row[ow] = std::min(std::max(row[ow], lo), hi);
            }
        });
        return true;
    }

private:
    // The entries' phase planes and flat offsets for phase planes wq wide, derived on the first call and kept
    // while the weight tensors and the width stay the same.
    SparseWeights weights(const ov::TensorVector& inputs, int channels, int wq) const {
        std::lock_guard<std::mutex> lock(mutex_);
        const float* value = inputs[1].data<const float>();
        if (value != derived_from_ || wq != derived_wq_) {
            const size_t count = inputs[1].get_shape()[0];
            const int32_t* channel = inputs[2].data<const int32_t>();
            const int32_t* tap = inputs[3].data<const int32_t>();
            const int stride = static_cast<int>(stride_), kw = static_cast<int>(kernel_w_);
            plane_.resize(count);
            offset_.resize(count);
            for (size_t e = 0; e < count; ++e) {
                const int kh_e = tap[e] / kw, kw_e = tap[e] % kw;
                if (channel[e] < 0 || channel[e] >= channels || kh_e >= kernel_h_)
                    throw std::runtime_error("slimkit SparseConv2d: entry " + std::to_string(e) +
                                             " names a channel or tap outside the layer");
                plane_[e] = channel[e] * stride * stride + (kh_e % stride) * stride + kw_e % stride;
                offset_[e] = (kh_e / stride) * wq + kw_e / stride;
            }
            read_ptr(inputs[4], ptr_);
            if (ptr_.back() != static_cast<int64_t>(count))
                throw std::runtime_error("slimkit SparseConv2d: ptr does not end at the entry count");
            derived_from_ = value;
            derived_wq_ = wq;
        }
        return SparseWeights{ptr_.data(), plane_.data(), offset_.data(), value, inputs[5].data<const float>()};
    }

    mutable std::mutex mutex_;
    mutable std::vector<int32_t> plane_, offset_;
    mutable std::vector<int64_t> ptr_;
    mutable const float* derived_from_ = nullptr;
    mutable int derived_wq_ = -1;
};


// The int8 layer of a quantized graph, with its input's quantizer and output's quantizers fused:
// y = post(clamp(pre(conv(Q_in(x), W) * scale + bias) (+ residual), low, high)), W the int8 weights kept in
// blocks of 4 input channels (CSR over output channels: weight i8 [4n], group i32 [n] (input channels
// 4g..4g+3), tap i32 [n] (kh * KW + kw), ptr i64 [O + 1]); scale [O] = input step x weight step, bias [O];
// optionally residual [B, O, OH, OW]. Q_in, pre and post are 8-bit grids with zero point 0 (attributes
// in_step/in_low/in_high, pre_..., post_...; a step of 0 leaves pre or post out). Sums are exact in int32.
class QuantSparseConv2d : public SparseKernelConv<4> {
public:
    OPENVINO_OP("QuantSparseConv2d", "slimkit");

    QuantSparseConv2d() = default;

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return clone_as<QuantSparseConv2d>(args);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        for (auto& [name, grid] : grids()) {
            visitor.on_attribute(name + "_step", grid->step);
            visitor.on_attribute(name + "_low", grid->low);
            visitor.on_attribute(name + "_high", grid->high);
        }
        visitor.on_attribute("link_output", link_output_);
        visitor.on_attribute("linked_input", linked_input_);
        visitor.on_attribute("float_output", float_output_);
        return SparseKernelConv<4>::visit_attributes(visitor);
    }

    void copy_attributes(const FusedEpilogue& other) override {
        SparseKernelConv<4>::copy_attributes(other);
        const auto& same = static_cast<const QuantSparseConv2d&>(other);
        in_ = same.in_;
        pre_ = same.pre_;
        post_ = same.post_;
        link_output_ = same.link_output_;
        linked_input_ = same.linked_input_;
        float_output_ = same.float_output_;
    }

    void validate_and_infer_types() override {
        SparseKernelConv<4>::validate_and_infer_types();  // a linked input [B, G, H, W, 4] has H, W where x has
        if (link_output_ != 0) {
            const ov::PartialShape y = get_output_partial_shape(0);
            ov::PartialShape ints = ov::PartialShape::dynamic(5);
            ints[0] = y[0];
            ints[1] = y[1].is_static() ? ov::Dimension((y[1].get_length() + 3) / 4) : ov::Dimension::dynamic();
            ints[2] = y[2];
            ints[3] = y[3];
            ints[4] = 4;
            set_output_type(1, ov::element::i16, ints);
        }
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto [batch, channels, height, width, stride, pad, kh, kw, out_c, out_h, out_w, hq, wq] = geometry(inputs);
        if (inputs[1].get_element_type() != ov::element::i8 || inputs[2].get_element_type() != ov::element::i32 ||
            inputs[3].get_element_type() != ov::element::i32)
            throw std::runtime_error("slimkit QuantSparseConv2d: weight must be int8, group and tap int32");
        if (!(in_.step > 0))
            throw std::runtime_error("slimkit QuantSparseConv2d: the input quantizer's step must be positive");
        const bool linked = linked_input_ != 0;  // input 0: the integers [B, G, H, W, 4] of the layer before
        if (linked && (inputs[0].get_element_type() != ov::element::i16 || inputs[0].get_shape()[4] != 4))
            throw std::runtime_error("slimkit QuantSparseConv2d: a linked input must be int16 [B, G, H, W, 4]");
        const int groups = linked ? channels : (channels + 3) / 4, phases = stride * stride;
        const size_t phase_plane = static_cast<size_t>(hq) * wq * 4;  // int16 per 4-channel phase plane
        const size_t image = static_cast<size_t>(groups) * phases * phase_plane;
        outputs[0].set_shape({batch, static_cast<size_t>(out_c), static_cast<size_t>(out_h), static_cast<size_t>(out_w)});
        const QuantBlocks w = blocks(inputs, groups, hq, wq);
        const float* x = linked ? nullptr : inputs[0].data<const float>();
        const int16_t* ints_in = linked ? inputs[0].data<const int16_t>() : nullptr;
        const float* scale = inputs[5].data<const float>();
        const float* bias = inputs[6].data<const float>();
        const float* residual = inputs.size() > 7 ? inputs[7].data<const float>() : nullptr;
        float* y = outputs[0].data<float>();
        // positions are computed in whole tiles, so the last tile of the last image reads up to a tile past
        // its planes: that slack is allocated and zeroed (the outputs it feeds are dropped)
        const size_t slack = 4 * QUANT_TILE;
        int16_t* planes = scratch<int16_t, 0>(batch * image + slack);
        std::fill(planes + batch * image, planes + batch * image + slack, int16_t{0});
        if (stride != 1) std::fill(planes, planes + batch * image, int16_t{0});  // padding, channels past the last
        const size_t area = static_cast<size_t>(height) * width;
        if (stride == 1 || linked) ov::parallel_for(batch * groups, [&](size_t item) {
            const size_t b = item / groups;
            const int g = static_cast<int>(item % groups);
            int16_t* plane = planes + b * image + static_cast<size_t>(g) * phases * phase_plane;
            if (stride == 1) {  // the padding: rows above and below, then the columns left and right of each row
                std::memset(plane, 0, sizeof(int16_t) * 4 * wq * pad);
                std::memset(plane + static_cast<size_t>(pad + height) * wq * 4, 0,
                            sizeof(int16_t) * 4 * wq * (hq - pad - height));
                for (int h = 0; h < height; ++h) {
                    int16_t* row = plane + static_cast<size_t>(h + pad) * wq * 4;
                    std::memset(row, 0, sizeof(int16_t) * 4 * pad);
                    std::memset(row + 4 * (pad + width), 0, sizeof(int16_t) * 4 * (wq - pad - width));
                }
            }
            for (int h = 0; h < height; ++h) {
                if (linked) {  // the integers are already this layer's: copied into place, 4 channels a pixel
                    const int16_t* src = ints_in + ((b * groups + g) * area + static_cast<size_t>(h) * width) * 4;
                    const int ph = (h + pad) % stride, i = (h + pad) / stride;
                    if (stride == 1) {
                        std::memcpy(plane + (static_cast<size_t>(i) * wq + pad) * 4, src, sizeof(int16_t) * 4 * width);
                        continue;
                    }
                    for (int pw = 0; pw < stride; ++pw) {  // columns v with (v + pad) % stride == pw
                        int16_t* out = plane + (ph * stride + pw) * phase_plane + static_cast<size_t>(i) * wq * 4;
                        const int v0 = first_in_phase(pw, pad, stride);
                        for (int v = v0, j = (v0 + pad) / stride; v < width; v += stride, ++j)
                            std::memcpy(out + 4 * j, src + 4 * v, sizeof(int16_t) * 4);
                    }
                    continue;
                }
                const float* rows[4];  // each group's rows quantized and interleaved in one vectorised pass
                for (int k = 0; k < 4; ++k)
                    rows[k] = 4 * g + k < channels ? x + ((b * channels + 4 * g + k) * height + h) * width : nullptr;
                quantize_group_row_any(rows, width, in_, plane + (static_cast<size_t>(h + pad) * wq + pad) * 4);
            }
        });
        if (stride != 1 && !linked) ov::parallel_for(batch * channels, [&](size_t item) {
            const size_t b = item / channels;
            const int c = static_cast<int>(item % channels);
            int16_t* group = planes + b * image + static_cast<size_t>(c / 4) * phases * phase_plane + c % 4;
            for (int h = 0; h < height; ++h) {
                const int ph = (h + pad) % stride, i = (h + pad) / stride;
                const float* row = x + ((b * channels + c) * height + h) * width;
                for (int pw = 0; pw < stride; ++pw) {  // columns v with (v + pad) % stride == pw
                    const int v0 = first_in_phase(pw, pad, stride);
                    if (v0 >= width) continue;
                    const int count = (width - v0 + stride - 1) / stride;
                    int16_t* out = group + (ph * stride + pw) * phase_plane + (static_cast<size_t>(i) * wq + (v0 + pad) / stride) * 4;
                    quantize_row_any(row + v0, stride, count, in_, out);
                }
            }
        });
        const QuantEpilogue e{pre_, low(), high(), post_};
        const size_t span = static_cast<size_t>(out_h - 1) * wq + out_w;
        const size_t tiles = (span + QUANT_TILE - 1) / QUANT_TILE * QUANT_TILE;  // positions computed
        const int block = 8, blocks_per_image = (out_c + block - 1) / block;  // 8: whole groups of 4
        const size_t out_area = static_cast<size_t>(out_h) * out_w, out_groups = (out_c + 3) / 4;
        int16_t* link = nullptr;
        if (link_output_ != 0) {
            outputs[1].set_shape({batch, out_groups, static_cast<size_t>(out_h), static_cast<size_t>(out_w), 4});
            link = outputs[1].data<int16_t>();
        }
        ov::parallel_for(batch * blocks_per_image, [&](size_t item) {
            const size_t b = item / blocks_per_image;
            const int first = static_cast<int>(item % blocks_per_image) * block;
            int32_t* acc = scratch<int32_t, 0>(tiles);
            int16_t* ints = link != nullptr ? scratch<int16_t, 1>(4 * out_area) : nullptr;  // a group's planes
            for (int o = first; o < std::min(out_c, first + block); ++o) {
                quant_sparse_row_any(planes + b * image, w, o, 0, static_cast<int>(tiles), acc);
                const size_t at = (b * out_c + o) * out_area;
                quant_epilogue_any(acc, wq, out_h, out_w, scale[o], bias[o], residual != nullptr ? residual + at : nullptr,
                                   e, float_output_ != 0 ? y + at : nullptr,
                                   ints != nullptr ? ints + (o % 4) * out_area : nullptr);
                if (ints != nullptr && (o % 4 == 3 || o == out_c - 1)) {  // a group done: interleave it
                    const int g = o / 4;
                    const int16_t* planes_of[4];
                    for (int k = 0; k < 4; ++k) planes_of[k] = 4 * g + k < out_c ? ints + k * out_area : nullptr;
                    interleave_group_any(planes_of, out_area, link + (b * out_groups + g) * out_area * 4);
                }
            }
        });
        return true;
    }

private:
    std::vector<std::pair<std::string, QuantGrid*>> grids() { return {{"in", &in_}, {"pre", &pre_}, {"post", &post_}}; }

    // The blocks' int16 weights and plane offsets, derived on the first call and kept while the weight tensor
    // and the plane sizes stay the same.
    QuantBlocks blocks(const ov::TensorVector& inputs, int groups, int hq, int wq) const {
        std::lock_guard<std::mutex> lock(mutex_);
        const int8_t* weight = inputs[1].data<const int8_t>();
        if (weight != derived_from_ || hq != derived_hq_ || wq != derived_wq_) {
            const size_t count = inputs[2].get_shape()[0];
            if (inputs[1].get_shape()[0] != 4 * count)
                throw std::runtime_error("slimkit QuantSparseConv2d: weight must hold 4 values per block");
            const int32_t* group = inputs[2].data<const int32_t>();
            const int32_t* tap = inputs[3].data<const int32_t>();
            const int stride = static_cast<int>(stride_), kw = static_cast<int>(kernel_w_);
            const size_t phase_plane = static_cast<size_t>(hq) * wq * 4;
            offset_.resize(count);
            weights_.assign(weight, weight + 4 * count);
            for (size_t e = 0; e < count; ++e) {
                const int kh_e = tap[e] / kw, kw_e = tap[e] % kw;
                if (group[e] < 0 || group[e] >= groups || tap[e] < 0 || kh_e >= kernel_h_)
                    throw std::runtime_error("slimkit QuantSparseConv2d: block " + std::to_string(e) +
                                             " names a channel group or tap outside the layer");
                const size_t plane = static_cast<size_t>(group[e]) * stride * stride + (kh_e % stride) * stride + kw_e % stride;
                offset_[e] = static_cast<int32_t>(plane * phase_plane + ((kh_e / stride) * wq + kw_e / stride) * 4);
            }
            read_ptr(inputs[4], ptr_);
            if (ptr_.back() != static_cast<int64_t>(count))
                throw std::runtime_error("slimkit QuantSparseConv2d: ptr does not end at the block count");
            derived_from_ = weight;
            derived_hq_ = hq;
            derived_wq_ = wq;
        }
        return QuantBlocks{ptr_.data(), offset_.data(), weights_.data()};
    }

    QuantGrid in_{0.0f, 0.0f, 0.0f}, pre_{0.0f, 0.0f, 0.0f}, post_{0.0f, 0.0f, 0.0f};
    int64_t link_output_ = 0;  // 1: output 1 holds y's integers [B, ceil(O / 4), OH, OW, 4] on its last grid
    int64_t linked_input_ = 0;  // 1: input 0 is such integers, on this layer's input grid
    int64_t float_output_ = 1;  // 0: nothing reads output 0 (every reader takes the integers): not written
    mutable std::mutex mutex_;
    mutable std::vector<int32_t> offset_;
    mutable std::vector<int16_t> weights_;
    mutable std::vector<int64_t> ptr_;
    mutable const int8_t* derived_from_ = nullptr;
    mutable int derived_hq_ = -1, derived_wq_ = -1;
};


// y = clamp(x W^T + shift (+ residual), low, high) over the last dimension of x, for a sparse W in CSR over
// output features: value f32, column i32 (input feature), ptr i64 [O + 1], shift [O]; optionally residual
// shaped like y. Attributes: clamp, low, high. Batch 1 runs gathered dot products; larger batches transpose
// x to batch-minor so each non-zero is one vectorised multiply-add row.
class SparseLinear : public FusedEpilogue {
public:
    OPENVINO_OP("SparseLinear", "slimkit");

    SparseLinear() = default;

    void validate_and_infer_types() override {
        ov::PartialShape out = get_input_partial_shape(0);
        const auto& ptr = get_input_partial_shape(3);
        if (out.rank().is_static())
            out[out.rank().get_length() - 1] = ptr.rank().is_static() && ptr[0].is_static()
                                                   ? ov::Dimension(ptr[0].get_length() - 1) : ov::Dimension::dynamic();
        set_output_type(0, ov::element::f32, out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return clone_as<SparseLinear>(args);
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        ov::Shape shape = inputs[0].get_shape();
        const size_t features = shape.back(), rows = ov::shape_size(shape) / std::max<size_t>(features, 1);
        const int out = static_cast<int>(inputs[3].get_shape()[0]) - 1;
        if (inputs[2].get_element_type() != ov::element::i32)
            throw std::runtime_error("slimkit SparseLinear: column must be int32");
        shape.back() = static_cast<size_t>(out);
        outputs[0].set_shape(shape);
        const SparseWeights w = weights(inputs, features);
        const float* x = inputs[0].data<const float>();
        const float* residual = inputs.size() > 5 ? inputs[5].data<const float>() : nullptr;
        float* y = outputs[0].data<float>();
        const int block = 16, blocks = (out + block - 1) / block;
        if (rows == 1) {
            ov::parallel_for(blocks, [&](int b) { sparse_dots_any(x, w, b * block, std::min(out, (b + 1) * block), y); });
        } else {
            float* xt = scratch<float, 2>(features * rows);
            float* yt = scratch<float, 3>(static_cast<size_t>(out) * rows);
            ov::parallel_for(features, [&](size_t k) {
                for (size_t n = 0; n < rows; ++n) xt[k * rows + n] = x[n * features + k];
            });
            ov::parallel_for(blocks, [&](int b) {
                sparse_rows_any(xt, static_cast<int>(rows), w, b * block, std::min(out, (b + 1) * block), yt);
            });
            ov::parallel_for(rows, [&](size_t n) {
                for (int o = 0; o < out; ++o) y[n * out + o] = yt[static_cast<size_t>(o) * rows + n];
            });
        }
        const float lo = low(), hi = high();
        const size_t total = rows * static_cast<size_t>(out);
        if (residual != nullptr)
            for (size_t i = 0; i < total; ++i) y[i] += residual[i];
        if (clamp_)
            for (size_t i = 0; i < total; ++i) y[i] = std::min(std::max(y[i], lo), hi);
        return true;
    }

private:
    SparseWeights weights(const ov::TensorVector& inputs, size_t features) const {
        std::lock_guard<std::mutex> lock(mutex_);
        const float* value = inputs[1].data<const float>();
        if (value != derived_from_) {
            read_ptr(inputs[3], ptr_);
            const size_t count = inputs[1].get_shape()[0];
            const int32_t* column = inputs[2].data<const int32_t>();
            if (ptr_.back() != static_cast<int64_t>(count))
                throw std::runtime_error("slimkit SparseLinear: ptr does not end at the entry count");
            for (size_t e = 0; e < count; ++e)
                if (column[e] < 0 || static_cast<size_t>(column[e]) >= features)
                    throw std::runtime_error("slimkit SparseLinear: entry " + std::to_string(e) +
                                             " names a column outside the input features");
            derived_from_ = value;
        }
        return SparseWeights{ptr_.data(), inputs[2].data<const int32_t>(), nullptr, value, inputs[4].data<const float>()};
    }

    mutable std::mutex mutex_;
    mutable std::vector<int64_t> ptr_;
    mutable const float* derived_from_ = nullptr;
};

}  // namespace slimkit

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<slimkit::BinaryConv2d>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<slimkit::BinaryConv2d>>("BinaryConv2d", "slimkit"),
    std::make_shared<ov::OpExtension<slimkit::SparseConv2d>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<slimkit::SparseConv2d>>("SparseConv2d", "slimkit"),
    std::make_shared<ov::OpExtension<slimkit::QuantSparseConv2d>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<slimkit::QuantSparseConv2d>>("QuantSparseConv2d", "slimkit"),
    std::make_shared<ov::OpExtension<slimkit::SparseLinear>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<slimkit::SparseLinear>>("SparseLinear", "slimkit"),
}));
