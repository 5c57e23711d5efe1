// slimkit::SparseLinear for OpenVINO; its torch face is SparseLinearFunction in engine/operators.py.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <openvino/core/parallel.hpp>

#include "dispatch.hpp"
#include "operator_base.hpp"

namespace slimkit {

// y = clamp(x W^T + shift (+ residual), low, high) over the last dimension of x, for a sparse W in CSR over
// output features: value f32, column i32 (input feature), ptr i64 [O + 1], shift [O]; optionally residual
// shaped like y. Attributes: clamp, low, high. Batch 1 runs gathered dot products; larger batches transpose
// x to batch-minor so each non-zero is one vectorised multiply-add row.
class SparseLinear : public FusedEpilogue {
public:
    OPENVINO_OP("SparseLinear", "slimkit");

    SparseLinear() = default;

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return clone_as<SparseLinear>(args);
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const Checker check(*this, layer_);
        const ov::Shape shape = checked_output(check, Inputs(inputs)).to_shape();
        const ov::Shape& xs = inputs[0].get_shape();
        const size_t features = xs.back();
        const int out = static_cast<int>(shape.back());
        const size_t rows = check.product("the input's rows", std::vector<uint64_t>(xs.begin(), xs.end() - 1), INT_LIMIT);
        check.product("the input", {rows, features}, BUFFER_LIMIT);
        check.product("the output", {rows, static_cast<uint64_t>(out)}, BUFFER_LIMIT);
        outputs[0].set_shape(shape);
        const SparseWeights w = weights(check, inputs, features);
        const float* x = inputs[0].data<const float>();
        const float* residual = inputs.size() > 5 ? inputs[5].data<const float>() : nullptr;
        float* y = outputs[0].data<float>();
        const int block = 16, blocks = (out + block - 1) / block;
        static const std::vector<Kernel> kernels = {{"generic", Isa::generic, 0}, {"avx2", Isa::avx2, 0},
                                                    {"avx512", Isa::avx512, 0}};
        const auto run = [&](size_t k) {
            const Isa isa = kernels[k].isa;
            if (rows == 1) {
                ov::parallel_for(blocks, [&](int b) {
                    sparse_dots_any(isa, x, w, b * block, std::min(out, (b + 1) * block), y);
                });
                return;
            }
            float* xt = scratch<float, 2>(features * rows);
            float* yt = scratch<float, 3>(static_cast<size_t>(out) * rows);
            ov::parallel_for(features, [&](size_t k) {
                for (size_t n = 0; n < rows; ++n) xt[k * rows + n] = x[n * features + k];
            });
            ov::parallel_for(blocks, [&](int b) {
                sparse_rows_any(isa, xt, static_cast<int>(rows), w, b * block, std::min(out, (b + 1) * block), yt);
            });
            ov::parallel_for(rows, [&](size_t n) {
                for (int o = 0; o < out; ++o) y[n * out + o] = yt[static_cast<size_t>(o) * rows + n];
            });
        };
        char signature[160];
        std::snprintf(signature, sizeof(signature), "in=%zu o=%d rows=%zu nonzeros=%zu threads=%d", features, out, rows,
                      inputs[1].get_shape()[0], parallel_get_max_threads());
        const Choice choice = choose("SparseLinear", signature, kernels, run);
        if (!choice.outputs_ready) run(choice.kernel);
        note_kernel(kernels[choice.kernel].name);
        const float lo = low(), hi = high();
        const size_t total = rows * static_cast<size_t>(out);
        if (residual != nullptr)
            for (size_t i = 0; i < total; ++i) y[i] += residual[i];
        if (clamp_)
            for (size_t i = 0; i < total; ++i) y[i] = std::min(std::max(y[i], lo), hi);
        return true;
    }

protected:
    size_t residual_input() const override { return 5; }

    // x f32 [..., F]; value f32 and column i32, [N] each; ptr [O + 1]; shift f32 [O].
    void check_inputs(const Checker& check, const Inputs& in) const override {
        check.element_type("input x", in.types[0], {ov::element::f32});
        check.require(in.shapes[0].rank().compatible(ov::Dimension(1, INT_LIMIT)), "input x",
                      "has no dimensions; its last holds the features");
        check.element_type("input value", in.types[1], {ov::element::f32});
        check.rank("input value", in.shapes[1], 1);
        check.element_type("input column", in.types[2], {ov::element::i32});
        check.rank("input column", in.shapes[2], 1);
        check.dimension("input column", in.shapes[2], 0, in.dim(1, 0), "one per entry, as value");
        check_csr_inputs(check, in, 3, {4});
    }

    ov::PartialShape output_shape(const Checker&, const Inputs& in) const override {
        ov::PartialShape out = in.shapes[0];
        if (out.rank().is_static()) out[out.rank().get_length() - 1] = csr_outputs(in, 3);
        return out;
    }

    // ptr: from 0 to the entry count, never decreasing; every column within the input's features; the values
    // and shifts finite.
    void check_data(const Checker& check, const Inputs& in) const override {
        if (in.dim(1, 0).is_static()) check.csr_ptr("input ptr", in.values[3], in.dim(1, 0).get_length(), 1);
        const ov::Dimension features = in.shapes[0].rank().is_static()
                                           ? in.dim(0, in.shapes[0].rank().get_length() - 1) : ov::Dimension::dynamic();
        check.indices("input column", in.values[2], features.is_static() ? features.get_length() : INT_LIMIT,
                      "an input feature");
        check.all_finite("input value", in.values[1]);
        check.all_finite("input shift", in.values[4]);
    }

private:
    // The CSR ptr as int64, read on the first call (after check_data) and kept while the weight tensors
    // (Constants, see constant_inputs) and the input's features stay the same.
    SparseWeights weights(const Checker& check, const ov::TensorVector& inputs, size_t features) const {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::vector<const void*> from = data_of(inputs, 1, 5);
        if (from != derived_from_ || features != derived_features_ || !constant_inputs(1, 5)) {
            check_data(check, Inputs(inputs));
            read_ptr(inputs[3], ptr_);
            derived_from_ = from;
            derived_features_ = features;
        }
        return SparseWeights{ptr_.data(), inputs[2].data<const int32_t>(), nullptr, inputs[1].data<const float>(),
                             inputs[4].data<const float>()};
    }

    mutable std::mutex mutex_;
    mutable std::vector<int64_t> ptr_;
    mutable std::vector<const void*> derived_from_;
    mutable size_t derived_features_ = 0;
};

std::vector<ov::Extension::Ptr> sparse_linear_extensions() { return extensions_of<SparseLinear>(); }

}  // namespace slimkit
