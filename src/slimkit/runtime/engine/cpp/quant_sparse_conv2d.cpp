// slimkit::QuantSparseConv2d for OpenVINO; its torch face is QuantSparseConv2dFunction in engine/operators.py.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <openvino/core/parallel.hpp>

#include "dispatch.hpp"
#include "operator_base.hpp"

namespace slimkit {

// The first input column (or row) v with (v + pad) % stride == phase: where a stride phase plane starts.
static int first_in_phase(int phase, int pad, int stride) { return ((phase - pad) % stride + stride) % stride; }

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

std::vector<ov::Extension::Ptr> quant_sparse_conv2d_extensions() { return extensions_of<QuantSparseConv2d>(); }

}  // namespace slimkit
