// slimkit::QuantSparseLinear for OpenVINO; its torch face is QuantSparseLinearFunction in engine/operators.py.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <type_traits>
#include <vector>

#include <openvino/core/parallel.hpp>

#include "dispatch.hpp"
#include "operator_base.hpp"

namespace slimkit {

// A transformer's int8 linear layer on activations x [..., K] (any leading dimensions, dynamic):
// y = clamp(Q_in(x) W^T * scale + bias (+ residual), low, high), Q_in the input's 8-bit grid (zero point 0;
// attributes in_step, in_low, in_high: unsigned 0..255 after a ReLU-like op, signed -128..127 after GELU or for
// attention projections), W [N, K] the int8 weights kept in blocks of 4 consecutive input features (CSR over
// output features: weight i8 [4n], group i32 [n] (features 4g..4g+3), ptr i64 [N + 1]); scale [N] = input step x
// weight step, bias [N]; attribute features = K. Every sum is exact in int32. The rows of x are the positions of
// QuantSparseConv2d's kernels (x W^T is a 1x1 conv over the rows), so the same kernels run, chosen by timing:
// int16 pair sums in every build, and in the AVX-512 build VNNI's u8 x s8 (a signed grid offset by 128 into
// 0..255, the kernel subtracting 128 x the output's weight sum).
class QuantSparseLinear : public FusedEpilogue {
public:
    OPENVINO_OP("QuantSparseLinear", "slimkit");

    QuantSparseLinear() = default;

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return clone_as<QuantSparseLinear>(args);
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("in_step", in_.step);
        visitor.on_attribute("in_low", in_.low);
        visitor.on_attribute("in_high", in_.high);
        visitor.on_attribute("features", features_);
        return FusedEpilogue::visit_attributes(visitor);
    }

    void copy_attributes(const FusedEpilogue& other) override {
        FusedEpilogue::copy_attributes(other);
        const auto& same = static_cast<const QuantSparseLinear&>(other);
        in_ = same.in_;
        features_ = same.features_;
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
        char signature[200];
        std::snprintf(signature, sizeof(signature), "k=%d n=%d rows=%zu blocks=%zu signed=%d residual=%d threads=%d",
                      call.features, call.outputs, call.rows, call.blocks, in_.low < 0 ? 1 : 0,
                      call.residual != nullptr ? 1 : 0, parallel_get_max_threads());
        const Choice choice = choose("QuantSparseLinear", signature, kernels, run);
        if (!choice.outputs_ready) run(choice.kernel);
        note_kernel(kernels[choice.kernel].name);
        return true;
    }

protected:
    // Positions (rows of x) one task computes: a multiple of the 512-bit kernel's 64, few enough that a task's
    // input planes (K bytes or int16 a row) stay in the core's cache while its outputs are computed.
    static constexpr size_t CHUNK = 256;
    static constexpr int OUTPUT_BLOCK = 16;  // output features a task computes over its chunk of rows

    void check_attributes(const Checker& check) const override {
        FusedEpilogue::check_attributes(check);
        check_grid(check, "in", in_, true);
        check.in_range("attribute features", features_, 1, INT_LIMIT / 4);
    }

    size_t residual_input() const override { return 6; }

    // x f32 [..., K]; weight i8 [4 n]; group i32 [n]; ptr [N + 1]; scale and bias f32 [N].
    void check_inputs(const Checker& check, const Inputs& in) const override {
        check.element_type("input x", in.types[0], {ov::element::f32});
        check.require(in.shapes[0].rank().compatible(ov::Dimension(1, 16)), "input x",
                      "has shape " + in.shapes[0].to_string() + "; it must have 1 to 16 dimensions, the last the features");
        if (in.shapes[0].rank().is_static())
            check.dimension("input x", in.shapes[0], in.shapes[0].rank().get_length() - 1, ov::Dimension(features_),
                            "the attribute features");
        check.element_type("input weight", in.types[1], {ov::element::i8});
        check.rank("input weight", in.shapes[1], 1);
        const ov::Dimension blocks = in.dim(2, 0);
        check.dimension("input weight", in.shapes[1], 0, blocks.is_static() ? ov::Dimension(4 * blocks.get_length()) : blocks,
                        "4 weights per block");
        check.element_type("input group", in.types[2], {ov::element::i32});
        check.rank("input group", in.shapes[2], 1);
        check_csr_inputs(check, in, 3, {4, 5});
    }

    ov::PartialShape output_shape(const Checker&, const Inputs& in) const override {
        ov::PartialShape out = in.shapes[0];
        if (out.rank().is_static()) out[out.rank().get_length() - 1] = csr_outputs(in, 3);
        return out;
    }

    // ptr: from 0 to the block count, never decreasing, at most MAX_INT8_BLOCKS_PER_OUTPUT a row; every group
    // within the features' groups of 4; the weights of a last partial group's missing features 0; scales and
    // biases finite.
    void check_data(const Checker& check, const Inputs& in) const override {
        if (in.dim(2, 0).is_static())
            check.csr_ptr("input ptr", in.values[3], in.dim(2, 0).get_length(), 1, MAX_INT8_BLOCKS_PER_OUTPUT);
        const int64_t groups = (features_ + 3) / 4;
        check.indices("input group", in.values[2], groups, "a group of 4 input features");
        if (features_ % 4 != 0 && in.values[1].known() && in.values[2].known())
            for (size_t e = 0; e < in.values[2].size(); ++e)
                if (in.values[2].integer(e) == groups - 1)
                    for (int64_t k = features_ % 4; k < 4 && 4 * e + k < in.values[1].size(); ++k)
                        check.require(in.values[1].integer(4 * e + k) == 0,
                                      "input weight[" + std::to_string(4 * e + k) + "]",
                                      "is " + std::to_string(in.values[1].integer(4 * e + k)) +
                                          "; a weight past the last feature must be 0");
        check.all_finite("input scale", in.values[4]);
        check.all_finite("input bias", in.values[5]);
    }

private:
    struct Call {
        size_t rows, padded, blocks;  // rows of x; rows rounded up to whole tiles; kept blocks
        int features, groups, outputs;
        const float* x;
        const float* scale;
        const float* bias;
        const float* residual;
        float* y;
    };

    Call prepare(ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
        const Checker check(*this, layer_);
        const ov::Shape out = checked_output(check, Inputs(inputs)).to_shape();
        const ov::Shape& xs = inputs[0].get_shape();
        const uint64_t rows = check.product("the input's rows", std::vector<uint64_t>(xs.begin(), xs.end() - 1), INT_LIMIT);
        check.in_range("the input's rows", static_cast<int64_t>(rows), 1, INT_LIMIT);
        const uint64_t padded = (rows + QUANT_TILE - 1) / QUANT_TILE * QUANT_TILE;
        const int groups = static_cast<int>((features_ + 3) / 4);
        // a plane offset (group x padded x 4) and the positions a tile reads past it are indexed with int32
        check.product("the input's planes", {static_cast<uint64_t>(groups) + 1, padded, 4}, INT_LIMIT);
        check.product("the output", {rows, static_cast<uint64_t>(out.back())}, BUFFER_LIMIT);
        outputs[0].set_shape(out);
        Call c{rows, padded, inputs[2].get_shape()[0], static_cast<int>(features_), groups, static_cast<int>(out.back()),
               inputs[0].data<const float>(), inputs[4].data<const float>(), inputs[5].data<const float>(),
               inputs.size() > 6 ? inputs[6].data<const float>() : nullptr, outputs[0].data<float>()};
        derive(check, inputs, padded);
        return c;
    }

    // The input's integers as planes [group][position][4 features] (int16: the integers; uint8: plus the offset),
    // positions past the rows and features past K set to the integer 0.
    template <typename T>
    T* fill_planes(const Call& c, Isa isa) const {
        const T zero = static_cast<T>(std::is_same_v<T, uint8_t> ? u8_offset(in_) : 0);
        const size_t plane = c.padded * 4;
        T* planes = scratch<T, 0>(c.groups * plane);
        const size_t rows_per_task = 16;
        ov::parallel_for((c.padded + rows_per_task - 1) / rows_per_task, [&](size_t task) {
            for (size_t m = task * rows_per_task; m < std::min(c.padded, (task + 1) * rows_per_task); ++m) {
                if (m >= c.rows) {
                    for (int g = 0; g < c.groups; ++g) std::fill_n(planes + g * plane + 4 * m, 4, zero);
                    continue;
                }
                if (c.features % 4 != 0) std::fill_n(planes + (c.groups - 1) * plane + 4 * m, 4, zero);
                const float* row = c.x + m * c.features;
                if constexpr (std::is_same_v<T, uint8_t>)
                    quantize_features_u8_any(isa, row, c.features, in_, u8_offset(in_), planes + 4 * m, plane);
                else
                    quantize_features_any(isa, row, c.features, in_, planes + 4 * m, plane);
            }
        });
        return planes;
    }

    // The call's outputs with `kernel` (T as in fill_planes; variant 1 or 2: the u8 kernels in 256- or 512-bit
    // registers). Tasks are chunks of rows x blocks of output features, chunk-major so that threads share a chunk.
    template <typename T>
    void compute(const Call& c, const Kernel& kernel) const {
        const T* planes = fill_planes<T>(c, kernel.isa);
        const QuantBlocks w{ptr_.data(), offset_.data(), weights_.data()};
        const QuantBlocks8 w8{ptr_.data(), offset_.data(), weights8_.data(), compensation_.data()};
        const size_t chunks = (c.padded + CHUNK - 1) / CHUNK;
        const int blocks = (c.outputs + OUTPUT_BLOCK - 1) / OUTPUT_BLOCK;
        ov::parallel_for(chunks * blocks, [&](size_t task) {
            const size_t start = task / blocks * CHUNK;
            const int first = static_cast<int>(task % blocks) * OUTPUT_BLOCK;
            const int last = std::min(c.outputs, first + OUTPUT_BLOCK);
            const int length = static_cast<int>(std::min(CHUNK, c.padded - start));
            int32_t* acc = scratch<int32_t, 0>(OUTPUT_BLOCK * CHUNK);
            for (int o = first; o < last; ++o) {
                int32_t* row = acc + static_cast<size_t>(o - first) * CHUNK;
                if constexpr (std::is_same_v<T, uint8_t>)
                    quant_sparse_row_u8_any(kernel.isa, kernel.variant - 1, planes, w8, o, start, length, row);
                else
                    quant_sparse_row_any(kernel.isa, planes, w, o, start, length, row);
            }
            const size_t at = start * c.outputs + first;
            quant_linear_epilogue_any(kernel.isa, acc, static_cast<int>(CHUNK), last - first,
                                      static_cast<int>(std::min(c.rows - std::min(c.rows, start), CHUNK)),
                                      c.scale + first, c.bias + first, c.residual != nullptr ? c.residual + at : nullptr,
                                      static_cast<size_t>(c.outputs), low(), high(), c.y + at);
        });
    }

    // The blocks' weights (int16 for the pair-sum kernels; 4 int8 in an int32 and each output's compensation for
    // the u8 ones) and plane offsets, derived on the first call (after check_data) and kept while the weight
    // tensors (Constants, see constant_inputs) and the planes' size stay the same.
    void derive(const Checker& check, const ov::TensorVector& inputs, size_t padded) const {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::vector<const void*> from = data_of(inputs, 1, 6);
        if (from == derived_from_ && padded == derived_padded_ && constant_inputs(1, 6)) return;
        check_data(check, Inputs(inputs));
        const int8_t* weight = inputs[1].data<const int8_t>();
        const int32_t* group = inputs[2].data<const int32_t>();
        const size_t count = inputs[2].get_shape()[0];
        offset_.resize(count);
        for (size_t e = 0; e < count; ++e) offset_[e] = static_cast<int32_t>(static_cast<size_t>(group[e]) * padded * 4);
        read_ptr(inputs[3], ptr_);
        int8_block_weights(weight, count, ptr_, u8_offset(in_), weights_, weights8_, compensation_);
        derived_from_ = from;
        derived_padded_ = padded;
    }

    QuantGrid in_{0.0f, 0.0f, 0.0f};
    int64_t features_ = 0;
    mutable std::mutex mutex_;
    mutable std::vector<int32_t> offset_;
    mutable std::vector<int16_t> weights_;
    mutable std::vector<int32_t> weights8_, compensation_;
    mutable std::vector<int64_t> ptr_;
    mutable std::vector<const void*> derived_from_;
    mutable size_t derived_padded_ = 0;
};

std::vector<ov::Extension::Ptr> quant_sparse_linear_extensions() { return extensions_of<QuantSparseLinear>(); }

}  // namespace slimkit
