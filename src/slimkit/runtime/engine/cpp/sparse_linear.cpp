// slimkit::SparseLinear for OpenVINO; its torch face is SparseLinearFunction in engine/operators.py.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <stdexcept>
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

std::vector<ov::Extension::Ptr> sparse_linear_extensions() { return extensions_of<SparseLinear>(); }

}  // namespace slimkit
