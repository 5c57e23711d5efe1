// What slimkit's operators share: the per-thread scratch buffers, reading the CSR ptr input, the base classes
// of the fused epilogue and of the conv geometry, and how an operator is registered with OpenVINO (each
// operator's file, binary_conv2d.cpp and the like, returns its extensions; extension.cpp collects them).
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>
#include <openvino/op/op.hpp>

#include "kernel_tuner.hpp"

namespace slimkit {

// A per-thread buffer of at least `count` elements, kept between calls: a fresh multi-megabyte allocation
// per call comes from mmap and page-faults on every first touch, which cost as much as a small layer's
// compute. One buffer per (type, slot) and thread; OpenVINO runs each inference's nodes on one thread.
template <typename T, int Slot>
T* scratch(size_t count) {
    thread_local std::vector<T> buffer;
    if (buffer.size() < count) buffer.resize(count);
    return buffer.data();
}

// The ptr input as int64: OpenVINO's CPU plugin may hand an i64 constant over as i32.
inline void read_ptr(const ov::Tensor& ptr, std::vector<int64_t>& out) {
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
        visitor.on_attribute("layer", layer_);
        return true;
    }

    bool has_evaluate() const override { return true; }

protected:
    // Tells the kernel tuner's report which kernel this node runs (kernel names are static strings, so a
    // pointer compare skips the report's lock on every call but the first and a change).
    void note_kernel(const char* kernel) const {
        if (noted_.exchange(kernel) != kernel) note_node(get_friendly_name(), kernel);
    }

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
        layer_ = other.layer_;
    }

    float low() const { return clamp_ ? low_ : -std::numeric_limits<float>::infinity(); }
    float high() const { return clamp_ ? high_ : std::numeric_limits<float>::infinity(); }

    int64_t clamp_ = 0;
    float low_ = 0.0f;
    float high_ = 0.0f;
    std::string layer_;  // the model layer this node stands for (export names the node after it)
    mutable std::atomic<const char*> noted_{nullptr};
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

// What the sparse conv operators add: the kernel size as attributes (their weights are not a dense tensor)
// and the output channel count from the CSR ptr input (input number PtrInput, [O + 1]).
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

// The extensions that register `Op` with OpenVINO's IR reader and its ONNX frontend (domain "slimkit").
template <typename Op>
std::vector<ov::Extension::Ptr> extensions_of() {
    const std::string name = Op::get_type_info_static().name;
    return {std::make_shared<ov::OpExtension<Op>>(),
            std::make_shared<ov::frontend::onnx::OpExtension<Op>>(name, "slimkit")};
}

// Each operator's extensions, from its own file.
std::vector<ov::Extension::Ptr> binary_conv2d_extensions();
std::vector<ov::Extension::Ptr> sparse_conv2d_extensions();
std::vector<ov::Extension::Ptr> quant_sparse_conv2d_extensions();
std::vector<ov::Extension::Ptr> sparse_linear_extensions();

}  // namespace slimkit
