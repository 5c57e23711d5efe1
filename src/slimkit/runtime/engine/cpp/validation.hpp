// What slimkit's operators check before they trust what a model file gives them. An exported IR holds each
// operator's attributes (model.xml) and constants (CSR ptr and index arrays, weights, scales: model.bin); a
// crafted file could name a channel outside the input or a ptr past its entries, and the kernels would read
// outside their buffers. So every operator checks its attributes, input types and shapes when OpenVINO
// validates the node (compile time), the data of its constant inputs then too, and the same data again when
// evaluate derives its layouts from them: once per new data pointer for Constants, on every call for an input
// that is not one (whose values may change in place); and the sizes of each call. A failed check throws InvalidInput, an ov::Exception naming the operator, the node
// and the field, which OpenVINO reports as its own errors (Python: a RuntimeError): never a crash.
//
// Floats: a NaN or an infinity in weights, scales, shifts or biases would turn every output of its channel
// into NaN or Inf without a word, and no export writes one (slimkit checks a model's values before export), so
// they are refused. The clamp bounds may be infinite (no bound on that side), never NaN.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <openvino/core/except.hpp>
#include <openvino/core/node.hpp>
#include <openvino/core/partial_shape.hpp>
#include <openvino/op/constant.hpp>
#include <openvino/runtime/tensor.hpp>

namespace slimkit {

// Kernel sizes, strides and paddings above this are refused: no network has them, and they bound the sizes
// a call computes from them.
constexpr int64_t MAX_WINDOW = 1024;
constexpr int64_t INT_LIMIT = std::numeric_limits<int32_t>::max();  // sizes the kernels index with int
constexpr uint64_t BUFFER_LIMIT = uint64_t{1} << 40;  // elements of one buffer a call allocates (8 TB of int64)

// Data an operator refuses (see the top of this file).
class InvalidInput : public ov::Exception {
public:
    explicit InvalidInput(const std::string& what) : ov::Exception(what) {}
};

// The values of one operator input, where they are known: a Constant's data at compile time, a tensor's in
// evaluate. Integers are read as int64 whatever their width (OpenVINO's CPU plugin may hand an i64 constant
// over as i32).
class Values {
public:
    Values() = default;  // not known (an input that is not a Constant, at compile time)
    Values(const void* data, ov::element::Type type, size_t count)
        : data_(data), type_(type), count_(count), known_(true) {}

    static Values of(const ov::Tensor& tensor) { return {tensor.data(), tensor.get_element_type(), tensor.get_size()}; }

    // Input `index` of `node` where it is a Constant.
    static Values constant(const ov::Node& node, size_t index) {
        const auto source = ov::as_type_ptr<ov::op::v0::Constant>(node.get_input_node_shared_ptr(index));
        if (source == nullptr) return {};
        return {source->get_data_ptr(), source->get_element_type(), ov::shape_size(source->get_shape())};
    }

    bool known() const { return known_; }
    size_t size() const { return count_; }

    int64_t integer(size_t i) const {
        if (type_ == ov::element::i64) return static_cast<const int64_t*>(data_)[i];
        if (type_ == ov::element::i32) return static_cast<const int32_t*>(data_)[i];
        if (type_ == ov::element::i16) return static_cast<const int16_t*>(data_)[i];
        return static_cast<const int8_t*>(data_)[i];
    }

    float real(size_t i) const { return static_cast<const float*>(data_)[i]; }

private:
    const void* data_ = nullptr;
    ov::element::Type type_;
    size_t count_ = 0;
    bool known_ = false;
};

// One node's checks: each failure throws InvalidInput naming the operator, the node and the field.
class Checker {
public:
    // `layer`: the model layer the node stands for (OpenVINO's IR reader validates a node before it names it).
    Checker(const ov::Node& node, const std::string& layer)
        : where_(std::string("slimkit::") + node.get_type_info().name + " node '" + node.get_friendly_name() + "'" +
                 (layer.empty() || layer == node.get_friendly_name() ? "" : " (layer '" + layer + "')")) {}

    // A float as a person reads it: 1, 0.5, nan, inf.
    static std::string text(float value) {
        std::ostringstream out;
        out << value;
        return out.str();
    }

    [[noreturn]] void fail(const std::string& field, const std::string& problem) const {
        throw InvalidInput(where_ + ": " + field + " " + problem);
    }

    void require(bool ok, const std::string& field, const std::string& problem) const {
        if (!ok) fail(field, problem);
    }

    // An integer attribute or size in [low, high].
    // (Each check builds its message only when it fails: evaluate runs them on every call.)
    void in_range(const std::string& field, int64_t value, int64_t low, int64_t high) const {
        if (value < low || value > high)
            fail(field, "is " + std::to_string(value) + "; allowed: " + std::to_string(low) + " to " + std::to_string(high));
    }

    void finite(const std::string& field, float value) const {
        if (!std::isfinite(value)) fail(field, "is " + text(value) + "; it must be finite");
    }

    void element_type(const std::string& field, const ov::element::Type& type,
                      std::initializer_list<ov::element::Type> allowed) const {
        if (type.is_dynamic()) return;
        std::string names;
        for (const auto& one : allowed) {
            if (type == one) return;
            names += (names.empty() ? "" : " or ") + one.get_type_name();
        }
        fail(field, "has element type " + type.get_type_name() + "; it must be " + names);
    }

    void rank(const std::string& field, const ov::PartialShape& shape, int64_t rank) const {
        if (!shape.rank().compatible(rank))
            fail(field, "has shape " + shape.to_string() + "; it must have " + std::to_string(rank) + " dimensions");
    }

    // Dimension `axis` of `shape` equals `expected` where both are known (`what` says what it must fit).
    void dimension(const std::string& field, const ov::PartialShape& shape, int64_t axis, const ov::Dimension& expected,
                   const std::string& what) const {
        if (shape.rank().is_dynamic() || axis >= shape.rank().get_length() || shape[axis].compatible(expected)) return;
        fail(field, "has shape " + shape.to_string() + ": dimension " + std::to_string(axis) + " must be " +
                        expected.to_string() + ", " + what);
    }

    // The product of `factors`, refused where it passes `limit` (no product overflows: each step is checked).
    uint64_t product(const std::string& field, const std::vector<uint64_t>& factors, uint64_t limit) const {
        uint64_t total = 1;
        for (uint64_t factor : factors)
            if (__builtin_mul_overflow(total, factor, &total) || total > limit)
                fail(field, "is too large (more than " + std::to_string(limit) + ")");
        return total;
    }

    // A CSR ptr over its rows: ptr[0] == 0, never decreasing, ptr[last] == `entries`, each row's entry count a
    // multiple of `multiple`, and at most `row_limit` entries in a row.
    void csr_ptr(const std::string& field, const Values& ptr, uint64_t entries, int64_t multiple,
                 int64_t row_limit = std::numeric_limits<int64_t>::max()) const {
        if (!ptr.known()) return;
        require(ptr.size() >= 2, field, "must hold at least 2 values (one output channel)");
        require(ptr.integer(0) == 0, field + "[0]", "is " + std::to_string(ptr.integer(0)) + "; it must be 0");
        for (size_t i = 1; i < ptr.size(); ++i) {
            const int64_t before = ptr.integer(i - 1), at = ptr.integer(i);
            const std::string name = field + "[" + std::to_string(i) + "]";
            if (at < before || at > static_cast<int64_t>(entries))
                fail(name, "is " + std::to_string(at) + " after " + std::to_string(before) +
                               "; it must lie from that to the entry count, " + std::to_string(entries));
            require((at - before) % multiple == 0, name,
                    "is " + std::to_string(at) + " after " + std::to_string(before) + ": a row holds a multiple of " +
                        std::to_string(multiple) + " entries");
            require(at - before <= row_limit, name,
                    "is " + std::to_string(at) + " after " + std::to_string(before) + ": a row holds at most " +
                        std::to_string(row_limit) + " entries");
        }
        const int64_t last = ptr.integer(ptr.size() - 1);
        require(last == static_cast<int64_t>(entries), field + "[" + std::to_string(ptr.size() - 1) + "]",
                "is " + std::to_string(last) + "; it must end at the entry count, " + std::to_string(entries));
    }

    // Every value in [0, limit).
    void indices(const std::string& field, const Values& index, int64_t limit, const std::string& what) const {
        if (!index.known()) return;
        for (size_t i = 0; i < index.size(); ++i)
            if (index.integer(i) < 0 || index.integer(i) >= limit)
                fail(field + "[" + std::to_string(i) + "]", "is " + std::to_string(index.integer(i)) + "; it must name " +
                                                                what + ", 0 to " + std::to_string(limit - 1));
    }

    void all_finite(const std::string& field, const Values& values) const {
        if (!values.known()) return;
        for (size_t i = 0; i < values.size(); ++i) finite(field + "[" + std::to_string(i) + "]", values.real(i));
    }

    void all_signs(const std::string& field, const Values& values) const {
        if (!values.known()) return;
        for (size_t i = 0; i < values.size(); ++i)
            require(values.real(i) == 1.0f || values.real(i) == -1.0f, field + "[" + std::to_string(i) + "]",
                    "is " + text(values.real(i)) + "; binary weights are +1 or -1");
    }

private:
    std::string where_;
};

// What a check knows of a node's inputs: at compile time their types, their shapes as far as OpenVINO knows
// them and the data of those that are Constants; in evaluate, the call's tensors.
struct Inputs {
    std::vector<ov::element::Type> types;
    std::vector<ov::PartialShape> shapes;
    std::vector<Values> values;

    explicit Inputs(const ov::Node& node) {
        for (size_t i = 0; i < node.get_input_size(); ++i) {
            types.push_back(node.get_input_element_type(i));
            shapes.push_back(node.get_input_partial_shape(i));
            values.push_back(Values::constant(node, i));
        }
    }

    explicit Inputs(const ov::TensorVector& tensors) {
        for (const auto& tensor : tensors) {
            types.push_back(tensor.get_element_type());
            shapes.emplace_back(tensor.get_shape());
            values.push_back(Values::of(tensor));
        }
    }

    size_t size() const { return shapes.size(); }

    // Dimension `axis` of input `i` (dynamic where not known).
    ov::Dimension dim(size_t i, int64_t axis) const {
        const auto& shape = shapes[i];
        return shape.rank().is_static() && axis < shape.rank().get_length() ? shape[axis] : ov::Dimension::dynamic();
    }
};

}  // namespace slimkit
