// slimkit's operators for OpenVINO: a shared library a user loads with core.add_extension(path), after
// which OpenVINO reads slimkit's exported ONNX and IR models. The kernels are compiled once per
// instruction set and picked at run time from the CPU's features (see isa()), so one build serves any
// x86-64 machine; SLIMKIT_ISA=generic|avx2|avx512 forces a lower level (tests compare every level).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/core/parallel.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>
#include <openvino/op/op.hpp>

#include "binary_shape.hpp"

namespace slimkit {

enum class Isa { generic, avx2, avx512 };

// The best level this CPU runs, capped by SLIMKIT_ISA when it is set.
Isa isa() {
    static const Isa chosen = [] {
        __builtin_cpu_init();
        Isa best = Isa::generic;
        if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) best = Isa::avx2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vpopcntdq"))
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

static void pack_image_any(const float* x, const Shape& s, uint64_t* n, uint64_t* p) {
    switch (isa()) {
        case Isa::avx512: return avx512::pack_image(x, s, n, p);
        case Isa::avx2: return avx2::pack_image(x, s, n, p);
        default: return generic::pack_image(x, s, n, p);
    }
}

static void conv_row_any(const uint64_t* n, const uint64_t* p, const uint64_t* w, const Epilogue& e, const Shape& s,
                         int oh, float* y) {
    switch (isa()) {
        case Isa::avx512:
            return avx512::conv_row(n, p, w, e, s, oh, y);
        case Isa::avx2: return avx2::conv_row(n, p, w, e, s, oh, y);
        default: return generic::conv_row(n, p, w, e, s, oh, y);
    }
}

// y = clamp(conv(sign(x), W) * scale + shift (+ residual), low, high) for +-1 weights W, with sign(0) = 0 and
// zero padding, as the training graph's BinaryConv2d computes its sums (exactly). The epilogue is what the
// exporter fused: the layer's own scale and bias, a BatchNorm folded into them, a residual add, a clamp
// (ReLU, hardtanh). Inputs: x [B, C, H, W] f32, W [O, C, KH, KW] f32 (+-1), scale [O], shift [O], and
// optionally residual [B, O, OH, OW]. Attributes: stride, pad (square); clamp (0/1), low, high.
class BinaryConv2d : public ov::op::Op {
public:
    OPENVINO_OP("BinaryConv2d", "slimkit");

    BinaryConv2d() = default;

    void validate_and_infer_types() override {
        const auto& x = get_input_partial_shape(0);
        const auto& w = get_input_partial_shape(1);
        ov::PartialShape out = ov::PartialShape::dynamic(4);
        if (x.rank().is_static() && w.rank().is_static()) {
            out[0] = x[0];
            out[1] = w[0];
            for (int axis = 2; axis < 4; ++axis)
                if (x[axis].is_static() && w[axis].is_static())
                    out[axis] = (x[axis].get_length() + 2 * pad_ - w[axis].get_length()) / stride_ + 1;
        }
        set_output_type(0, ov::element::f32, out);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        auto copy = std::make_shared<BinaryConv2d>();
        copy->set_arguments(args);
        copy->stride_ = stride_;
        copy->pad_ = pad_;
        copy->clamp_ = clamp_;
        copy->low_ = low_;
        copy->high_ = high_;
        copy->constructor_validate_and_infer_types();
        return copy;
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("stride", stride_);
        visitor.on_attribute("pad", pad_);
        visitor.on_attribute("clamp", clamp_);
        visitor.on_attribute("low", low_);
        visitor.on_attribute("high", high_);
        return true;
    }

    bool has_evaluate() const override { return true; }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const auto& xs = inputs[0].get_shape();
        const auto& ws = inputs[1].get_shape();
        Shape s{};
        s.channels = static_cast<int>(xs[1]);
        s.height = static_cast<int>(xs[2]);
        s.width = static_cast<int>(xs[3]);
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
        if (static_cast<int>(ws[1]) != s.channels)
            throw std::runtime_error("slimkit BinaryConv2d: the input has " + std::to_string(s.channels) +
                                     " channels and the weights " + std::to_string(ws[1]));
        if (s.kernel_h * s.words > 16 * 64)
            throw std::runtime_error("slimkit BinaryConv2d: kernel rows x words per row exceeds 1024");
        const size_t batch = xs[0];
        outputs[0].set_shape({batch, static_cast<size_t>(s.out_c), static_cast<size_t>(s.out_h),
                              static_cast<size_t>(s.out_w)});
        const uint64_t* wbits = packed_weights(inputs[1], s);
        const float* x = inputs[0].data<const float>();
        const float* residual = inputs.size() > 4 ? inputs[4].data<const float>() : nullptr;
        Epilogue e{inputs[2].data<const float>(), inputs[3].data<const float>(), nullptr,
                   clamp_ ? low_ : -std::numeric_limits<float>::infinity(),
                   clamp_ ? high_ : std::numeric_limits<float>::infinity()};
        float* y = outputs[0].data<float>();
        const size_t plane = static_cast<size_t>(s.height) * s.words * s.cols;
        std::vector<uint64_t> nonzero(batch * plane), positive(batch * plane);
        const size_t image_in = static_cast<size_t>(s.channels) * s.height * s.width;
        const size_t image_out = static_cast<size_t>(s.out_c) * s.out_h * s.out_w;
        ov::parallel_for(batch, [&](size_t b) {
            pack_image_any(x + b * image_in, s, nonzero.data() + b * plane, positive.data() + b * plane);
        });
        ov::parallel_for(batch * s.out_h, [&](size_t row) {
            const size_t b = row / s.out_h;
            Epilogue image = e;
            if (residual != nullptr) image.residual = residual + b * image_out;
            conv_row_any(nonzero.data() + b * plane, positive.data() + b * plane, wbits, image, s,
                         static_cast<int>(row % s.out_h), y + b * image_out);
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

    int64_t stride_ = 1;
    int64_t pad_ = 0;
    int64_t clamp_ = 0;
    float low_ = 0.0f;
    float high_ = 0.0f;
    mutable std::mutex mutex_;
    mutable std::vector<uint64_t> packed_;
    mutable const float* packed_from_ = nullptr;
};

}  // namespace slimkit

OPENVINO_CREATE_EXTENSIONS(std::vector<ov::Extension::Ptr>({
    std::make_shared<ov::OpExtension<slimkit::BinaryConv2d>>(),
    std::make_shared<ov::frontend::onnx::OpExtension<slimkit::BinaryConv2d>>("BinaryConv2d", "slimkit"),
}));
