// slimkit::QuantSparseConv2d for OpenVINO; its torch face is QuantSparseConv2dFunction in engine/operators.py.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
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

    void infer_second_output(const ov::PartialShape& y) override {
        if (link_output_ == 0) return;  // a linked input [B, G, H, W, 4] has H, W where x has
        ov::PartialShape ints = ov::PartialShape::dynamic(5);
        ints[0] = y[0];
        ints[1] = y[1].is_static() ? ov::Dimension((y[1].get_length() + 3) / 4) : ov::Dimension::dynamic();
        ints[2] = y[2];
        ints[3] = y[3];
        ints[4] = 4;
        set_output_type(1, ov::element::i16, ints);
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const Call call = prepare(outputs, inputs);
        const std::vector<Kernel> kernels = int8_kernels(in_);
        const auto run = [&](size_t k) {
            if (kernels[k].variant == 0)
                compute<int16_t>(call, kernels[k]);
            else
                compute<uint8_t>(call, kernels[k]);
        };
        const Choice choice = choose("QuantSparseConv2d", signature(call), kernels, run);
        if (!choice.outputs_ready) run(choice.kernel);
        note_kernel(kernels[choice.kernel].name);
        return true;
    }

protected:
    // Every grid a step (in: > 0; pre and post: 0 for none) on an 8-bit grid with zero point 0; the flags 0 or
    // 1, and no float output only where the integers are handed on.
    void check_attributes(const Checker& check) const override {
        SparseKernelConv<4>::check_attributes(check);
        for (const auto& [name, grid] : grids()) check_grid(check, name, *grid, name == "in");
        check.in_range("attribute link_output", link_output_, 0, 1);
        check.in_range("attribute linked_input", linked_input_, 0, 1);
        check.in_range("attribute float_output", float_output_, link_output_ == 0 ? 1 : 0, 1);
    }

    size_t residual_input() const override { return 7; }

    // x f32 [B, C, H, W] (or a linked input's integers i16 [B, G, H, W, 4]); weight i8 [4 N]; group and tap
    // i32 [N]; ptr [O + 1]; scale and bias f32 [O].
    void check_inputs(const Checker& check, const Inputs& in) const override {
        const bool linked = linked_input_ != 0;
        check.element_type("input x", in.types[0], {linked ? ov::element::i16 : ov::element::f32});
        check.rank("input x", in.shapes[0], linked ? 5 : 4);
        if (linked) check.dimension("input x", in.shapes[0], 4, 4, "4 channels a position");
        check.element_type("input weight", in.types[1], {ov::element::i8});
        check.rank("input weight", in.shapes[1], 1);
        const ov::Dimension blocks = in.dim(2, 0);
        check.dimension("input weight", in.shapes[1], 0, blocks.is_static() ? ov::Dimension(4 * blocks.get_length()) : blocks,
                        "4 weights per block");
        for (size_t i : {size_t{2}, size_t{3}}) {
            const std::string name = i == 2 ? "input group" : "input tap";
            check.element_type(name, in.types[i], {ov::element::i32});
            check.rank(name, in.shapes[i], 1);
            check.dimension(name, in.shapes[i], 0, blocks, "one per block");
        }
        check_csr_inputs(check, in, 4, {5, 6});
    }

    // ptr: from 0 to the block count, never decreasing, at most MAX_BLOCKS_PER_OUTPUT a row; every group within
    // the input's channel groups and every tap within the kernel; scales and biases finite.
    void check_data(const Checker& check, const Inputs& in) const override {
        if (in.dim(2, 0).is_static())
            check.csr_ptr("input ptr", in.values[4], in.dim(2, 0).get_length(), 1, MAX_INT8_BLOCKS_PER_OUTPUT);
        const ov::Dimension channels = in.dim(0, 1);
        const int64_t groups = channels.is_dynamic() ? INT_LIMIT
                               : linked_input_ != 0 ? channels.get_length() : (channels.get_length() + 3) / 4;
        check.indices("input group", in.values[2], groups, "a group of 4 input channels");
        check.indices("input tap", in.values[3], kernel_h_ * kernel_w_, "a kernel position");
        check.all_finite("input scale", in.values[5]);
        check.all_finite("input bias", in.values[6]);
    }

private:
    // One call's sizes, inputs and outputs.
    struct Call {
        Geometry g;
        bool linked;  // input 0: the integers [B, G, H, W, 4] of the layer before
        int groups, phases;
        size_t phase_plane, image;  // elements per 4-channel phase plane and per image (int16 or uint8 alike)
        const float* x;
        const int16_t* ints_in;
        const float* scale;
        const float* bias;
        const float* residual;
        float* y;
        int16_t* link;  // output 1, or null
        size_t blocks;
    };

    Call prepare(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
        const Checker check(*this, layer_);
        const Geometry g = geometry(check, inputs, checked_output(check, Inputs(inputs)).to_shape());
        const bool linked = linked_input_ != 0;
        // one image's planes (with the positions a tile computes past them) are indexed with int32
        const uint64_t groups = linked ? g.channels : (g.channels + 3) / 4;
        const uint64_t image = check.product("the input's phase planes", {groups, static_cast<uint64_t>(g.stride),
                                             static_cast<uint64_t>(g.stride), static_cast<uint64_t>(g.hq) + 1,
                                             static_cast<uint64_t>(g.wq) + QUANT_TILE, 4}, INT_LIMIT);
        check.product("the input's planes", {image, g.batch}, BUFFER_LIMIT);
        Call c{g, linked, linked ? g.channels : (g.channels + 3) / 4, g.stride * g.stride, 0, 0, nullptr, nullptr,
               inputs[5].data<const float>(), inputs[6].data<const float>(),
               inputs.size() > 7 ? inputs[7].data<const float>() : nullptr, nullptr, nullptr, inputs[2].get_shape()[0]};
        c.phase_plane = static_cast<size_t>(g.hq) * g.wq * 4;
        c.image = static_cast<size_t>(c.groups) * c.phases * c.phase_plane;
        if (linked)
            c.ints_in = inputs[0].data<const int16_t>();
        else
            c.x = inputs[0].data<const float>();
        outputs[0].set_shape({g.batch, static_cast<size_t>(g.out_c), static_cast<size_t>(g.out_h),
                              static_cast<size_t>(g.out_w)});
        c.y = outputs[0].data<float>();
        if (link_output_ != 0) {
            outputs[1].set_shape({g.batch, static_cast<size_t>(g.out_c + 3) / 4, static_cast<size_t>(g.out_h),
                                  static_cast<size_t>(g.out_w), 4});
            c.link = outputs[1].data<int16_t>();
        }
        derive(check, inputs, c.groups, g.hq, g.wq);
        return c;
    }

    // What the kernel tuner keys its choice by: everything that changes the work or its layout.
    std::string signature(const Call& c) const {
        const Geometry& g = c.g;
        char text[320];
        std::snprintf(text, sizeof(text),
                      "c=%d o=%d k=%dx%d s=%d p=%d in=%dx%d b=%zu blocks=%zu linked=%d link=%d float=%d signed=%d "
                      "residual=%d threads=%d",
                      g.channels, g.out_c, g.kernel_h, g.kernel_w, g.stride, g.pad, g.height, g.width, g.batch,
                      c.blocks, c.linked ? 1 : 0, link_output_ != 0 ? 1 : 0, float_output_ != 0 ? 1 : 0,
                      in_.low < 0 ? 1 : 0, c.residual != nullptr ? 1 : 0, parallel_get_max_threads());
        return text;
    }

    int offset() const { return u8_offset(in_); }

    // The input planes, [group][stride phase][position][4 channels], of every image in T (int16: the integers;
    // uint8: the integers plus offset()), the zero padding and the slack past the last image included.
    template <typename T>
    T* fill_planes(const Call& c, Isa isa) const {
        const Geometry& g = c.g;
        const T zero = static_cast<T>(std::is_same_v<T, uint8_t> ? offset() : 0);
        // positions are computed in whole tiles, so the last tile of the last image reads up to a tile past
        // its planes: that slack is allocated and set (the outputs it feeds are dropped)
        const size_t slack = 4 * QUANT_TILE, total = g.batch * c.image;
        T* planes = scratch<T, 0>(total + slack);
        std::fill(planes + total, planes + total + slack, zero);
        if (g.stride != 1) std::fill(planes, planes + total, zero);  // padding, channels past the last
        const size_t area = static_cast<size_t>(g.height) * g.width;
        if (g.stride == 1 || c.linked) ov::parallel_for(g.batch * c.groups, [&](size_t item) {
            const size_t b = item / c.groups;
            const int group = static_cast<int>(item % c.groups);
            T* plane = planes + b * c.image + static_cast<size_t>(group) * c.phases * c.phase_plane;
            if (g.stride == 1) {  // the padding: rows above and below, then the columns left and right of each row
                std::fill_n(plane, 4 * g.wq * g.pad, zero);
                std::fill_n(plane + static_cast<size_t>(g.pad + g.height) * g.wq * 4, 4 * g.wq * (g.hq - g.pad - g.height),
                            zero);
                for (int h = 0; h < g.height; ++h) {
                    T* row = plane + static_cast<size_t>(h + g.pad) * g.wq * 4;
                    std::fill_n(row, 4 * g.pad, zero);
                    std::fill_n(row + 4 * (g.pad + g.width), 4 * (g.wq - g.pad - g.width), zero);
                }
            }
            for (int h = 0; h < g.height; ++h) {
                if (c.linked) {  // the integers are already this layer's: copied into place, 4 channels a pixel
                    const int16_t* src = c.ints_in + ((b * c.groups + group) * area + static_cast<size_t>(h) * g.width) * 4;
                    const int ph = (h + g.pad) % g.stride, i = (h + g.pad) / g.stride;
                    if (g.stride == 1) {
                        T* out = plane + (static_cast<size_t>(i) * g.wq + g.pad) * 4;
                        for (int k = 0; k < 4 * g.width; ++k) out[k] = static_cast<T>(src[k] + zero);
                        continue;
                    }
                    for (int pw = 0; pw < g.stride; ++pw) {  // columns v with (v + pad) % stride == pw
                        T* out = plane + (ph * g.stride + pw) * c.phase_plane + static_cast<size_t>(i) * g.wq * 4;
                        const int v0 = first_in_phase(pw, g.pad, g.stride);
                        for (int v = v0, j = (v0 + g.pad) / g.stride; v < g.width; v += g.stride, ++j)
                            for (int k = 0; k < 4; ++k) out[4 * j + k] = static_cast<T>(src[4 * v + k] + zero);
                    }
                    continue;
                }
                const float* rows[4];  // each group's rows quantized and interleaved in one vectorised pass
                for (int k = 0; k < 4; ++k)
                    rows[k] = 4 * group + k < g.channels
                                  ? c.x + ((b * g.channels + 4 * group + k) * g.height + h) * g.width : nullptr;
                T* out = plane + (static_cast<size_t>(h + g.pad) * g.wq + g.pad) * 4;
                if constexpr (std::is_same_v<T, uint8_t>)
                    quantize_group_row_u8_any(isa, rows, g.width, in_, zero, out);
                else
                    quantize_group_row_any(isa, rows, g.width, in_, out);
            }
        });
        if (g.stride != 1 && !c.linked) ov::parallel_for(g.batch * g.channels, [&](size_t item) {
            const size_t b = item / g.channels;
            const int channel = static_cast<int>(item % g.channels);
            T* group = planes + b * c.image + static_cast<size_t>(channel / 4) * c.phases * c.phase_plane + channel % 4;
            for (int h = 0; h < g.height; ++h) {
                const int ph = (h + g.pad) % g.stride, i = (h + g.pad) / g.stride;
                const float* row = c.x + ((b * g.channels + channel) * g.height + h) * g.width;
                for (int pw = 0; pw < g.stride; ++pw) {  // columns v with (v + pad) % stride == pw
                    const int v0 = first_in_phase(pw, g.pad, g.stride);
                    if (v0 >= g.width) continue;
                    const int count = (g.width - v0 + g.stride - 1) / g.stride;
                    T* out = group + (ph * g.stride + pw) * c.phase_plane +
                             (static_cast<size_t>(i) * g.wq + (v0 + g.pad) / g.stride) * 4;
                    if constexpr (std::is_same_v<T, uint8_t>)
                        quantize_row_u8_any(isa, row + v0, g.stride, count, in_, zero, out);
                    else
                        quantize_row_any(isa, row + v0, g.stride, count, in_, out);
                }
            }
        });
        return planes;
    }

    // The call's outputs with `kernel`: T is the planes' element type (int16_t: the pair-sum kernels; uint8_t:
    // the u8 x s8 ones, whose variant 1 or 2 is their 256- or 512-bit form).
    template <typename T>
    void compute(const Call& c, const Kernel& kernel) const {
        const Geometry& g = c.g;
        const T* planes = fill_planes<T>(c, kernel.isa);
        const QuantEpilogue e{pre_, low(), high(), post_};
        const size_t span = static_cast<size_t>(g.out_h - 1) * g.wq + g.out_w;
        const size_t tiles = (span + QUANT_TILE - 1) / QUANT_TILE * QUANT_TILE;  // positions computed
        const int block = 8, blocks_per_image = (g.out_c + block - 1) / block;  // 8: whole groups of 4
        const size_t out_area = static_cast<size_t>(g.out_h) * g.out_w, out_groups = (g.out_c + 3) / 4;
        const QuantBlocks w{ptr_.data(), offset_.data(), weights_.data()};
        const QuantBlocks8 w8{ptr_.data(), offset_.data(), weights8_.data(), compensation_.data()};
        ov::parallel_for(g.batch * blocks_per_image, [&](size_t item) {
            const size_t b = item / blocks_per_image;
            const int first = static_cast<int>(item % blocks_per_image) * block;
            int32_t* acc = scratch<int32_t, 0>(tiles);
            int16_t* ints = c.link != nullptr ? scratch<int16_t, 1>(4 * out_area) : nullptr;  // a group's planes
            for (int o = first; o < std::min(g.out_c, first + block); ++o) {
                if constexpr (std::is_same_v<T, uint8_t>)
                    quant_sparse_row_u8_any(kernel.isa, kernel.variant - 1, planes + b * c.image, w8, o, 0,
                                            static_cast<int>(tiles), acc);
                else
                    quant_sparse_row_any(kernel.isa, planes + b * c.image, w, o, 0, static_cast<int>(tiles), acc);
                const size_t at = (b * g.out_c + o) * out_area;
                quant_epilogue_any(kernel.isa, acc, g.wq, g.out_h, g.out_w, c.scale[o], c.bias[o],
                                   c.residual != nullptr ? c.residual + at : nullptr, e,
                                   float_output_ != 0 ? c.y + at : nullptr,
                                   ints != nullptr ? ints + (o % 4) * out_area : nullptr);
                if (ints != nullptr && (o % 4 == 3 || o == g.out_c - 1)) {  // a group done: interleave it
                    const int group = o / 4;
                    const int16_t* planes_of[4];
                    for (int k = 0; k < 4; ++k) planes_of[k] = 4 * group + k < g.out_c ? ints + k * out_area : nullptr;
                    interleave_group_any(kernel.isa, planes_of, out_area, c.link + (b * out_groups + group) * out_area * 4);
                }
            }
        });
    }

    std::vector<std::pair<std::string, QuantGrid*>> grids() { return {{"in", &in_}, {"pre", &pre_}, {"post", &post_}}; }
    std::vector<std::pair<std::string, const QuantGrid*>> grids() const {
        return {{"in", &in_}, {"pre", &pre_}, {"post", &post_}};
    }

    // The blocks' weights (int16 for the pair-sum kernels; 4 int8 in an int32, and each output channel's
    // compensation, for the u8 ones) and plane offsets, derived on the first call (after check_data) and kept
    // while the weight tensors (Constants, see constant_inputs), the input's channel groups and the plane sizes
    // stay the same.
    void derive(const Checker& check, const ov::TensorVector& inputs, int groups, int hq, int wq) const {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::vector<const void*> from = data_of(inputs, 1, 7);
        if (from == derived_from_ && groups == derived_groups_ && hq == derived_hq_ && wq == derived_wq_ &&
            constant_inputs(1, 7))
            return;
        check_data(check, Inputs(inputs));
        const int8_t* weight = inputs[1].data<const int8_t>();
        const size_t count = inputs[2].get_shape()[0];
        const int32_t* group = inputs[2].data<const int32_t>();
        const int32_t* tap = inputs[3].data<const int32_t>();
        const int stride = static_cast<int>(stride_), kw = static_cast<int>(kernel_w_);
        const size_t phase_plane = static_cast<size_t>(hq) * wq * 4;
        offset_.resize(count);
        for (size_t e = 0; e < count; ++e) {
            const int kh_e = tap[e] / kw, kw_e = tap[e] % kw;
            const size_t plane = static_cast<size_t>(group[e]) * stride * stride + (kh_e % stride) * stride + kw_e % stride;
            offset_[e] = static_cast<int32_t>(plane * phase_plane + ((kh_e / stride) * wq + kw_e / stride) * 4);
        }
        read_ptr(inputs[4], ptr_);
        int8_block_weights(weight, count, ptr_, offset(), weights_, weights8_, compensation_);
        derived_from_ = from;
        derived_groups_ = groups;
        derived_hq_ = hq;
        derived_wq_ = wq;
    }

    QuantGrid in_{0.0f, 0.0f, 0.0f}, pre_{0.0f, 0.0f, 0.0f}, post_{0.0f, 0.0f, 0.0f};
    int64_t link_output_ = 0;  // 1: output 1 holds y's integers [B, ceil(O / 4), OH, OW, 4] on its last grid
    int64_t linked_input_ = 0;  // 1: input 0 is such integers, on this layer's input grid
    int64_t float_output_ = 1;  // 0: nothing reads output 0 (every reader takes the integers): not written
    mutable std::mutex mutex_;
    mutable std::vector<int32_t> offset_;
    mutable std::vector<int16_t> weights_;
    mutable std::vector<int32_t> weights8_, compensation_;
    mutable std::vector<int64_t> ptr_;
    mutable std::vector<const void*> derived_from_;
    mutable int derived_groups_ = -1, derived_hq_ = -1, derived_wq_ = -1;
};

std::vector<ov::Extension::Ptr> quant_sparse_conv2d_extensions() { return extensions_of<QuantSparseConv2d>(); }

}  // namespace slimkit
