// slimkit::SparseConv2d for OpenVINO; its torch face is SparseConv2dFunction in engine/operators.py.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <openvino/core/parallel.hpp>

#include "dispatch.hpp"
#include "operator_base.hpp"

namespace slimkit {

// One build's compiled loops each: the kernel tuner times them (they differ in vector width alone).
static const std::vector<Kernel>& kernels() {
    static const std::vector<Kernel> all = {{"generic", Isa::generic, 0}, {"avx2", Isa::avx2, 0}, {"avx512", Isa::avx512, 0}};
    return all;
}

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
        const Checker check(*this, layer_);
        const ov::Shape out = checked_output(check, Inputs(inputs)).to_shape();
        const auto [batch, channels, height, width, stride, pad, kh, kw, out_c, out_h, out_w, hq, wq] =
            geometry(check, inputs, out);
        // the phase planes of every image side by side, a spare row, and a segment past them: indexed with int
        check.product("the input's padded planes", {batch, static_cast<uint64_t>(hq) + 1, static_cast<uint64_t>(wq),
                                                     2}, INT_LIMIT);
        const uint64_t phase_planes = check.product("the input's phase planes", {static_cast<uint64_t>(channels),
                                              static_cast<uint64_t>(stride), static_cast<uint64_t>(stride)}, INT_LIMIT);
        check.product("the input's phase planes' values", {phase_planes, batch, static_cast<uint64_t>(hq) + 1,
                                                           static_cast<uint64_t>(wq)}, BUFFER_LIMIT);
        check.product("the output rows", {static_cast<uint64_t>(out_c), batch, static_cast<uint64_t>(hq) + 1,
                                          static_cast<uint64_t>(wq) + 1024}, BUFFER_LIMIT);
        const int planes_count = channels * stride * stride;
        const size_t image = static_cast<size_t>(hq) * wq, plane_stride = batch * image + wq;  // + a spare row
        outputs[0].set_shape({batch, static_cast<size_t>(out_c), static_cast<size_t>(out_h), static_cast<size_t>(out_w)});
        const SparseWeights w = weights(check, inputs, channels, wq);
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
        const auto run = [&](size_t k) {
            ov::parallel_for(segments * blocks, [&](size_t item) {
                const size_t seg = item / blocks;
                const int first = static_cast<int>(item % blocks) * block;
                const size_t start = seg * segment;
                const int length = static_cast<int>(std::min<size_t>(segment, span - start));
                sparse_segment_any(kernels()[k].isa, planes, plane_stride, w, first, std::min(out_c, first + block), start,
                                   length, static_cast<int>(row_stride),
                                   flat + static_cast<size_t>(first) * row_stride + start);
            });
        };
        char signature[256];
        std::snprintf(signature, sizeof(signature), "c=%d o=%d k=%dx%d s=%d p=%d in=%dx%d b=%zu nonzeros=%zu threads=%d",
                      channels, out_c, kh, kw, stride, pad, height, width, batch, inputs[1].get_shape()[0],
                      parallel_get_max_threads());
        const Choice choice = choose("SparseConv2d", signature, kernels(), run);
        if (!choice.outputs_ready) run(choice.kernel);
        note_kernel(kernels()[choice.kernel].name);
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

protected:
    size_t residual_input() const override { return 6; }

    // x f32 [B, C, H, W]; value f32, channel and tap i32, [N] each; ptr [O + 1]; shift f32 [O].
    void check_inputs(const Checker& check, const Inputs& in) const override {
        check.element_type("input x", in.types[0], {ov::element::f32});
        check.rank("input x", in.shapes[0], 4);
        const char* names[3] = {"input value", "input channel", "input tap"};
        for (int i = 1; i <= 3; ++i) {
            check.element_type(names[i - 1], in.types[i], {i == 1 ? ov::element::f32 : ov::element::i32});
            check.rank(names[i - 1], in.shapes[i], 1);
            check.dimension(names[i - 1], in.shapes[i], 0, in.dim(1, 0), "one per entry, as value");
        }
        check_csr_inputs(check, in, 4, {5});
    }

    // ptr: from 0 to the entry count, never decreasing, each output channel's entries a multiple of 4 (the
    // kernel reads them 4 at a time); every channel within the input and every tap within the kernel; the
    // values and shifts finite.
    void check_data(const Checker& check, const Inputs& in) const override {
        if (in.dim(1, 0).is_static()) check.csr_ptr("input ptr", in.values[4], in.dim(1, 0).get_length(), 4);
        const ov::Dimension channels = in.dim(0, 1);
        check.indices("input channel", in.values[2], channels.is_static() ? channels.get_length() : INT_LIMIT,
                      "an input channel");
        check.indices("input tap", in.values[3], kernel_h_ * kernel_w_, "a kernel position");
        check.all_finite("input value", in.values[1]);
        check.all_finite("input shift", in.values[5]);
    }

private:
    // The entries' phase planes and flat offsets for phase planes wq wide, derived on the first call (after
    // check_data) and kept while the weight tensors (Constants, see constant_inputs), the input's channels and
    // the width stay the same.
    SparseWeights weights(const Checker& check, const ov::TensorVector& inputs, int channels, int wq) const {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::vector<const void*> from = data_of(inputs, 1, 6);
        if (from != derived_from_ || wq != derived_wq_ || channels != derived_channels_ || !constant_inputs(1, 6)) {
            check_data(check, Inputs(inputs));
            const size_t count = inputs[1].get_shape()[0];
            const int32_t* channel = inputs[2].data<const int32_t>();
            const int32_t* tap = inputs[3].data<const int32_t>();
            const int stride = static_cast<int>(stride_), kw = static_cast<int>(kernel_w_);
            plane_.resize(count);
            offset_.resize(count);
            for (size_t e = 0; e < count; ++e) {
                const int kh_e = tap[e] / kw, kw_e = tap[e] % kw;
                plane_[e] = channel[e] * stride * stride + (kh_e % stride) * stride + kw_e % stride;
                offset_[e] = (kh_e / stride) * wq + kw_e / stride;
            }
            read_ptr(inputs[4], ptr_);
            derived_from_ = from;
            derived_wq_ = wq;
            derived_channels_ = channels;
        }
        return SparseWeights{ptr_.data(), plane_.data(), offset_.data(), inputs[1].data<const float>(),
                             inputs[5].data<const float>()};
    }

    mutable std::mutex mutex_;
    mutable std::vector<int32_t> plane_, offset_;
    mutable std::vector<int64_t> ptr_;
    mutable std::vector<const void*> derived_from_;
    mutable int derived_wq_ = -1, derived_channels_ = -1;
};

std::vector<ov::Extension::Ptr> sparse_conv2d_extensions() { return extensions_of<SparseConv2d>(); }

}  // namespace slimkit
