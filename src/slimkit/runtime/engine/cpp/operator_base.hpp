// What slimkit's operators share: the per-thread scratch buffers, reading the CSR ptr input, the base classes
// of the fused epilogue and of the conv geometry (with the checks of what they read, validation.hpp), and how
// an operator is registered with OpenVINO (each operator's file, binary_conv2d.cpp and the like, returns its
// extensions; extension.cpp collects them).
#pragma once
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <openvino/core/extension.hpp>
#include <openvino/core/op_extension.hpp>
#include <openvino/frontend/onnx/extension/op.hpp>
#include <openvino/op/op.hpp>

#include "kernel_tuner.hpp"
#include "kernels/kernel_shapes.hpp"
#include "validation.hpp"

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
// residual is an extra last input), copying them into a clone, and the checks of what the node reads
// (validation.hpp): OpenVINO's validation of the node runs them all, its Constant inputs' data included;
// evaluate runs checked_output on every call and check_data whenever it derives its layouts from new data.
class FusedEpilogue : public ov::op::Op {
public:
    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("clamp", clamp_);
        visitor.on_attribute("low", low_);
        visitor.on_attribute("high", high_);
        visitor.on_attribute("layer", layer_);
        return true;
    }

    void validate_and_infer_types() override {
        const Checker check(*this, layer_);
        check_attributes(check);
        const Inputs in(*this);
        const ov::PartialShape out = checked_output(check, in);
        set_output_type(0, ov::element::f32, out);
        infer_second_output(out);
        check_data(check, in);
    }

    bool has_evaluate() const override { return true; }

protected:
    // The attributes' checks; an operator with attributes of its own extends this.
    virtual void check_attributes(const Checker& check) const {
        check.in_range("attribute clamp", clamp_, 0, 1);
        if (std::isnan(low_) || std::isnan(high_) || (clamp_ != 0 && low_ > high_))  // message built on failure only
            check.fail("attributes low, high",
                       "are " + Checker::text(low_) + ", " + Checker::text(high_) + "; a clamp needs low <= high");
    }

    // The input that holds a fused residual, when there is one (the last; every input before it is required).
    virtual size_t residual_input() const = 0;
    // The inputs' element types and shapes (ranks, each length against the others where both are known).
    virtual void check_inputs(const Checker& check, const Inputs& in) const = 0;
    // Output 0's shape from checked inputs (a window that does not fit the input is refused).
    virtual ov::PartialShape output_shape(const Checker& check, const Inputs& in) const = 0;
    // The data the operator reads where it is known: constants at compile time, the call's in evaluate.
    virtual void check_data(const Checker& check, const Inputs& in) const = 0;
    // Output 1, for an operator that hands the next one bits or integers.
    virtual void infer_second_output(const ov::PartialShape&) {}

    // Output 0's shape, after the checks of the input count, the inputs and the residual (f32, exactly the
    // output's shape): what validation and every call of evaluate run first.
    ov::PartialShape checked_output(const Checker& check, const Inputs& in) const {
        const int64_t first = static_cast<int64_t>(residual_input());
        check.in_range("the number of inputs", static_cast<int64_t>(in.size()), first, first + 1);
        check_inputs(check, in);
        const ov::PartialShape out = output_shape(check, in);
        if (in.size() > residual_input()) {
            check.element_type("input residual", in.types[first], {ov::element::f32});
            if (!in.shapes[first].compatible(out))
                check.fail("input residual",
                           "has shape " + in.shapes[first].to_string() + "; it must be the output's, " + out.to_string());
        }
        return out;
    }

    // Whether inputs [first, last) are Constants of the graph this node runs in, so their data cannot change
    // between calls: the data an operator derives its layouts from is checked (and derived) once per new data
    // pointer then, and on every call otherwise (a crafted graph may compute an index input, whose buffer
    // keeps its address while its values change).
    bool constant_inputs(size_t first, size_t last) const {
        for (size_t i = first; i < last; ++i)
            if (ov::as_type_ptr<ov::op::v0::Constant>(get_input_node_shared_ptr(i)) == nullptr) return false;
        return true;
    }

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

// The data pointers of inputs [first, last) of a call: what an operator's derived layouts were made from.
inline std::vector<const void*> data_of(const ov::TensorVector& inputs, size_t first, size_t last) {
    std::vector<const void*> data;
    for (size_t i = first; i < last; ++i) data.push_back(inputs[i].data());
    return data;
}

// The output channels (or features) of a CSR layout whose ptr is input `ptr`: its length less one.
inline ov::Dimension csr_outputs(const Inputs& in, size_t ptr) {
    const ov::Dimension length = in.dim(ptr, 0);
    return length.is_static() ? ov::Dimension(length.get_length() - 1) : ov::Dimension::dynamic();
}

// The checks of a CSR layout's inputs: ptr (input `ptr`) i32 or i64 [O + 1] with O >= 1, and the inputs
// `per_output` (shifts, scales, biases) f32 [O].
inline void check_csr_inputs(const Checker& check, const Inputs& in, size_t ptr, std::initializer_list<size_t> per_output) {
    check.element_type("input ptr", in.types[ptr], {ov::element::i64, ov::element::i32});
    check.rank("input ptr", in.shapes[ptr], 1);
    const ov::Dimension out = csr_outputs(in, ptr);
    if (out.is_static()) check.in_range("the outputs (ptr's length less one)", out.get_length(), 1, INT_LIMIT / 4);
    for (size_t i : per_output) {
        check.element_type("input " + std::to_string(i), in.types[i], {ov::element::f32});
        check.rank("input " + std::to_string(i), in.shapes[i], 1);
        check.dimension("input " + std::to_string(i), in.shapes[i], 0, out, "one value per output");
    }
}

// The blocks of 4 int8 weights an output of the block-sparse int8 operators may hold so that its int32 sums stay
// exact: each adds 4 products of an input of at most 255 (an integer of the input grid, or it plus the u8 kernels'
// offset) and a weight of at most 128 in size.
constexpr int64_t MAX_INT8_BLOCKS_PER_OUTPUT = INT_LIMIT / (4 * 255 * 128);

// An 8-bit grid attribute of the int8 operators (<name>_step, _low, _high): a finite step, positive where
// `required` (else positive or 0 for no quantizer), on -128..127 or 0..255 with zero point 0.
inline void check_grid(const Checker& check, const std::string& name, const QuantGrid& grid, bool required) {
    check.finite("attribute " + name + "_step", grid.step);
    check.require(required ? grid.step > 0 : grid.step >= 0, "attribute " + name + "_step",
                  "is " + Checker::text(grid.step) + "; it must be " +
                      (required ? "positive" : "positive, or 0 for no quantizer"));
    check.require(grid.step == 0 || (grid.low == -128 && grid.high == 127) || (grid.low == 0 && grid.high == 255),
                  "attributes " + name + "_low, " + name + "_high",
                  "are " + Checker::text(grid.low) + ", " + Checker::text(grid.high) +
                      "; an 8-bit grid is -128 to 127 or 0 to 255");
}

// The u8 x s8 kernels hold each input integer plus an offset in a byte: 128 for a grid with negative integers, 0
// for an unsigned one (they subtract offset x each output's weight sum, so the sums stay exact); a grid that does
// not fit 0..255 that way runs the int16 kernels only.
inline int u8_offset(const QuantGrid& grid) { return grid.low < 0 ? 128 : 0; }
inline bool u8_offset_fits(const QuantGrid& grid) {
    return grid.low + u8_offset(grid) >= 0 && grid.high + u8_offset(grid) <= 255;
}

// The int8 operators' kernels: int16 pair sums in every build; where the input grid fits a byte with its offset,
// the AVX-512 build's VNNI u8 x s8 too, in 256- and 512-bit registers (variants 1 and 2).
inline std::vector<Kernel> int8_kernels(const QuantGrid& in) {
    std::vector<Kernel> kernels = {{"generic", Isa::generic, 0}, {"avx2", Isa::avx2, 0}, {"avx512/i16", Isa::avx512, 0}};
    if (u8_offset_fits(in))
        kernels.insert(kernels.end(), {{"avx512/u8-ymm", Isa::avx512, 1}, {"avx512/u8-zmm", Isa::avx512, 2}});
    return kernels;
}

// The int8 blocks' weights as the kernels read them (`count` blocks of 4 int8 in CSR `ptr`): int16 for the
// pair-sum kernels; for the u8 ones each block's 4 bytes as one int32 and each output's compensation, `offset`
// times its weight sum (exact in int32: MAX_INT8_BLOCKS_PER_OUTPUT bounds it).
inline void int8_block_weights(const int8_t* weight, size_t count, const std::vector<int64_t>& ptr, int offset,
                               std::vector<int16_t>& weights, std::vector<int32_t>& weights8,
                               std::vector<int32_t>& compensation) {
    weights.assign(weight, weight + 4 * count);
    weights8.resize(count);
    for (size_t e = 0; e < count; ++e) std::memcpy(&weights8[e], weight + 4 * e, sizeof(int32_t));
    compensation.assign(ptr.size() - 1, 0);
    for (size_t o = 0; o + 1 < ptr.size(); ++o)
        for (int64_t e = ptr[o]; e < ptr[o + 1]; ++e)
            for (int k = 0; k < 4; ++k) compensation[o] += offset * weight[4 * e + k];
}

// What the two conv operators add: square stride and padding, and the [B, O, OH, OW] output shape.
class FusedConv : public FusedEpilogue {
public:
    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("stride", stride_);
        visitor.on_attribute("pad", pad_);
        return FusedEpilogue::visit_attributes(visitor);
    }

protected:
    void check_attributes(const Checker& check) const override {
        FusedEpilogue::check_attributes(check);
        check.in_range("attribute stride", stride_, 1, MAX_WINDOW);
        check.in_range("attribute pad", pad_, 0, MAX_WINDOW);
    }

    // [B, O, OH, OW] for input x (input 0, with `skip` extra axes before its spatial ones: 1 for packed bits
    // [B, 2, words, H, W]); an empty batch, and a kernel that does not fit the padded input, are refused. The
    // input's sides are at most INT_LIMIT / 4, so a padded side and its phases stay ints.
    ov::PartialShape conv_output(const Checker& check, const Inputs& in, const ov::Dimension& out_channels,
                                 const ov::Dimension& kernel_h, const ov::Dimension& kernel_w, int skip = 0) const {
        ov::PartialShape out = ov::PartialShape::dynamic(4);
        out[0] = in.dim(0, 0);
        if (out[0].is_static()) check.in_range("the input's batch", out[0].get_length(), 1, INT_LIMIT);
        out[1] = out_channels;
        const ov::Dimension kernel[2] = {kernel_h, kernel_w};
        for (int axis = 0; axis < 2; ++axis) {
            const ov::Dimension size = in.dim(0, axis + 2 + skip);
            if (size.is_dynamic() || kernel[axis].is_dynamic()) continue;
            const char* name = axis == 0 ? "height" : "width";
            check.in_range(std::string("the input's ") + name, size.get_length(), 1, INT_LIMIT / 4);
            const int64_t padded = size.get_length() + 2 * pad_;
            if (padded < kernel[axis].get_length())
                check.fail(std::string("the input's ") + name,
                           "is " + std::to_string(size.get_length()) + ": with padding " + std::to_string(pad_) +
                               " the kernel of " + std::to_string(kernel[axis].get_length()) + " does not fit it");
            out[axis + 2] = (padded - kernel[axis].get_length()) / stride_ + 1;
        }
        return out;
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
    void check_attributes(const Checker& check) const override {
        FusedConv::check_attributes(check);
        check.in_range("attribute kernel_h", kernel_h_, 1, MAX_WINDOW);
        check.in_range("attribute kernel_w", kernel_w_, 1, MAX_WINDOW);
    }

    ov::PartialShape output_shape(const Checker& check, const Inputs& in) const override {
        return conv_output(check, in, csr_outputs(in, PtrInput), ov::Dimension(kernel_h_), ov::Dimension(kernel_w_));
    }

    // A call's sizes; the input is read as the stride x stride phases of its zero-padded planes, each a
    // stride-1 plane of hq x wq (so a strided conv computes no output it drops). `out` is checked_output's.
    struct Geometry {
        size_t batch;
        int channels, height, width, stride, pad, kernel_h, kernel_w, out_c, out_h, out_w, hq, wq;
    };

    Geometry geometry(const Checker& check, const ov::TensorVector& inputs, const ov::Shape& out) const {
        const auto& xs = inputs[0].get_shape();
        check.in_range("the input's channels", static_cast<int64_t>(xs[1]), 1, INT_LIMIT / 4);
        Geometry g{xs[0], static_cast<int>(xs[1]), static_cast<int>(xs[2]), static_cast<int>(xs[3]),
                   static_cast<int>(stride_), static_cast<int>(pad_), static_cast<int>(kernel_h_),
                   static_cast<int>(kernel_w_), static_cast<int>(out[1]), static_cast<int>(out[2]),
                   static_cast<int>(out[3]), 0, 0};
        g.hq = (g.height + 2 * g.pad + g.stride - 1) / g.stride;
        g.wq = (g.width + 2 * g.pad + g.stride - 1) / g.stride;
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
std::vector<ov::Extension::Ptr> quant_sparse_linear_extensions();
std::vector<ov::Extension::Ptr> sparse_linear_extensions();

}  // namespace slimkit
