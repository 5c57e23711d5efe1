// slimkit::BinaryConv2d for OpenVINO; its torch face is BinaryConv2dFunction in engine/operators.py.
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

// y = clamp(conv(sign(x), W) * scale + shift (+ residual), low, high) for +-1 weights W, with sign(0) = 0 and
// zero padding, as the training graph's BinaryConv2d computes its sums (exactly). The epilogue is what the
// exporter fused: the layer's own scale and bias, a BatchNorm folded into them, a residual add, a clamp
// (ReLU, hardtanh). Inputs: x [B, C, H, W] f32, W [O, C, KH, KW] f32 (+-1), scale [O], shift [O], and
// optionally residual [B, O, OH, OW]. Attributes: stride, pad (square); clamp (0/1), low, high; one_plane
// (1: sign(0) = +1, so a pixel is never 0 and windows clear of the padding need one bit plane).
// Packed links between binary layers: pack_output (0: none; 1 or 2: also write y's sign bits under sign(0) = 0
// or +1, as output 1, i64 [B, 2, ceil(O / 64), OH, OW], the non-zero plane then the positive plane, channel
// c at bit c % 64 of word c / 64) and packed_input (1: input 0 is such bits, [B, 2, words, H, W], so this layer
// reads no floats and skips the sign pass; its channel count comes from the weights).
// pool (0: none; 2: a 2x2 max pool of stride 2 after the conv, fused with what follows it): inputs post_scale [O]
// and post_shift [O] follow shift (a BatchNorm after the pool), and y = clamp(maxpool(conv * scale + shift) *
// post_scale + post_shift (+ residual), low, high), of the pooled size [B, O, OH / 2, OW / 2] (bits too).
class BinaryConv2d : public FusedConv {
public:
    OPENVINO_OP("BinaryConv2d", "slimkit");

    BinaryConv2d() = default;

    void infer_second_output(const ov::PartialShape& y) override {
        if (pack_output_ == 0) return;
        ov::PartialShape bits = ov::PartialShape::dynamic(5);
        bits[0] = y[0];
        bits[1] = 2;
        bits[2] = y[1].is_static() ? ov::Dimension((y[1].get_length() + 63) / 64) : ov::Dimension::dynamic();
        bits[3] = y[2];
        bits[4] = y[3];
        set_output_type(1, ov::element::i64, bits);
    }

    std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& args) const override {
        return clone_as<BinaryConv2d>(args);
    }

    void copy_attributes(const FusedEpilogue& other) override {
        FusedConv::copy_attributes(other);
        const auto& same = static_cast<const BinaryConv2d&>(other);
        one_plane_ = same.one_plane_;
        pack_output_ = same.pack_output_;
        packed_input_ = same.packed_input_;
        pool_ = same.pool_;
    }

    bool visit_attributes(ov::AttributeVisitor& visitor) override {
        visitor.on_attribute("one_plane", one_plane_);
        visitor.on_attribute("pack_output", pack_output_);
        visitor.on_attribute("packed_input", packed_input_);
        visitor.on_attribute("pool", pool_);
        return FusedConv::visit_attributes(visitor);
    }

    bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override {
        const Checker check(*this, layer_);
        const ov::Shape out = checked_output(check, Inputs(inputs)).to_shape();
        const auto& xs = inputs[0].get_shape();
        const auto& ws = inputs[1].get_shape();
        const int spatial = packed_input_ ? 3 : 2;  // bits are [B, 2, words, H, W]
        // per image, every size the kernels index with int
        check.product("the input image", {ws[1], xs[spatial], xs[spatial + 1]}, INT_LIMIT);
        const int rows_per_output = pool_ != 0 ? 2 : 1;  // conv rows per output row
        const uint64_t conv_h = (xs[spatial] + 2 * pad_ - ws[2]) / stride_ + 1, conv_w = (xs[spatial + 1] + 2 * pad_ - ws[3]) / stride_ + 1;
        check.product("the output image", {out[1], conv_h, conv_w + 3}, INT_LIMIT);
        Shape s{};
        s.channels = static_cast<int>(ws[1]);
        s.height = static_cast<int>(xs[spatial]);
        s.width = static_cast<int>(xs[spatial + 1]);
        s.out_c = static_cast<int>(ws[0]);
        s.kernel_h = static_cast<int>(ws[2]);
        s.kernel_w = static_cast<int>(ws[3]);
        s.stride = static_cast<int>(stride_);
        s.pad = static_cast<int>(pad_);
        s.out_h = static_cast<int>(conv_h);  // the conv's output; a fused pool halves it
        s.out_w = static_cast<int>(conv_w);
        s.words = (s.kernel_w * s.channels + 63) / 64;
        s.cols = (s.out_w + 3) / 4 * 4;
        s.outs = (s.out_c + 3) / 4 * 4;
        s.one_plane = static_cast<int>(one_plane_);
        const size_t in_channels = packed_input_ ? 2 * xs[2] : xs[1];
        const size_t batch = xs[0];
        check.product("the packed input planes", {batch, static_cast<uint64_t>(s.height), static_cast<uint64_t>(s.words),
                                                  static_cast<uint64_t>(s.cols)}, BUFFER_LIMIT);
        const size_t out_h = out[2], out_w = out[3];
        outputs[0].set_shape({batch, static_cast<size_t>(s.out_c), out_h, out_w});
        const size_t out_area = out_h * out_w, out_words = (s.out_c + 63) / 64;
        uint64_t* bits = nullptr;
        if (pack_output_ != 0) {
            outputs[1].set_shape({batch, 2, out_words, out_h, out_w});
            bits = reinterpret_cast<uint64_t*>(outputs[1].data<int64_t>());
        }
        const uint64_t* wbits = packed_weights(check, inputs, s);
        const float* residual = inputs.size() > residual_input() ? inputs[residual_input()].data<const float>() : nullptr;
        const Epilogue e{inputs[2].data<const float>(), inputs[3].data<const float>(), nullptr, low(), high(),
                         pool_ != 0 ? inputs[4].data<const float>() : nullptr,
                         pool_ != 0 ? inputs[5].data<const float>() : nullptr};
        float* y = outputs[0].data<float>();
        const size_t plane = static_cast<size_t>(s.height) * s.words * s.cols;
        const size_t image_in = in_channels * s.height * s.width;
        const size_t image_out = static_cast<size_t>(s.out_c) * out_area;
        const size_t rows = batch * out_h;
        const int bits_one_plane = pack_output_ == 2 ? 1 : 0;
        // the kernels: each build's, and in the AVX-512 build hand-written VPOPCNTDQ sums in 256- or 512-bit registers
        static const std::vector<Kernel> kernels = {{"generic", Isa::generic, 0}, {"avx2", Isa::avx2, 0},
                                                    {"avx512/ymm", Isa::avx512, 0}, {"avx512/zmm", Isa::avx512, 1}};
        // One parallel region: each thread takes a contiguous run of output rows (whole images where the batch
        // allows) and packs, into planes of its own, only the input rows those rows read, so the planes are
        // still in cache when its rows read them and a small batch still splits over the threads.
        const auto run = [&](size_t k) {
            const Isa isa = kernels[k].isa;
            ov::parallel_nt_static(0, [&](int thread, int threads) {
                const size_t begin = rows * thread / threads, end = rows * (thread + 1) / threads;
                uint64_t* nonzero = scratch<uint64_t, 0>(plane);
                uint64_t* positive = scratch<uint64_t, 1>(plane);
                for (size_t row = begin; row < end;) {
                    const size_t b = row / out_h;
                    const int first = static_cast<int>(row - b * out_h);
                    const int last = static_cast<int>(std::min(end - b * out_h, out_h));
                    // the input rows that conv rows first * rows_per_output .. last * rows_per_output - 1 read
                    const int in_first = std::max(0, first * rows_per_output * s.stride - s.pad);
                    const int in_end = std::min(s.height, (last * rows_per_output - 1) * s.stride - s.pad + s.kernel_h);
                    if (in_first < in_end && packed_input_) {
                        const uint64_t* half = reinterpret_cast<const uint64_t*>(inputs[0].data<const int64_t>()) +
                                               b * image_in;
                        assemble_rows_any(isa, half, half + image_in / 2, s, in_first, in_end, nonzero, positive);
                    } else if (in_first < in_end) {
                        pack_rows_any(isa, inputs[0].data<const float>() + b * image_in, s, in_first, in_end, nonzero,
                                      positive);
                    }
                    Epilogue image = e;
                    if (residual != nullptr) image.residual = residual + b * image_out;
                    uint64_t* out_half = bits == nullptr ? nullptr : bits + b * 2 * out_words * out_area;
                    const SignBits image_bits{out_half, out_half + out_words * out_area, out_area, bits_one_plane};
                    for (int oh = first; oh < last; ++oh) {
                        const SignBits* row_bits = bits == nullptr ? nullptr : &image_bits;
                        if (pool_ != 0)
                            pool_row_any(isa, kernels[k].variant, nonzero, positive, wbits, image, s, oh,
                                         y + b * image_out, row_bits);
                        else
                            conv_row_any(isa, kernels[k].variant, nonzero, positive, wbits, image, s, oh,
                                         y + b * image_out, row_bits);
                    }
                    row = b * out_h + last;
                }
            });
        };
        char signature[256];
        std::snprintf(signature, sizeof(signature),
                      "c=%d o=%d k=%dx%d s=%d p=%d in=%dx%d b=%zu one_plane=%d pack=%d packed=%d residual=%d threads=%d%s",
                      s.channels, s.out_c, s.kernel_h, s.kernel_w, s.stride, s.pad, s.height, s.width, batch,
                      s.one_plane, static_cast<int>(pack_output_), static_cast<int>(packed_input_),
                      residual != nullptr ? 1 : 0, parallel_get_max_threads(), pool_ != 0 ? " pool=2" : "");
        const Choice choice = choose("BinaryConv2d", signature, kernels, run);
        if (!choice.outputs_ready) run(choice.kernel);
        note_kernel(kernels[choice.kernel].name);
        return true;
    }

protected:
    void check_attributes(const Checker& check) const override {
        FusedConv::check_attributes(check);
        check.in_range("attribute one_plane", one_plane_, 0, 1);
        check.in_range("attribute pack_output", pack_output_, 0, 2);
        check.in_range("attribute packed_input", packed_input_, 0, 1);
        if (pool_ != 0 && pool_ != 2)
            check.fail("attribute pool", "is " + std::to_string(pool_) + "; allowed: 0 (none) or 2 (a 2x2 max pool, stride 2)");
    }

    size_t residual_input() const override { return pool_ != 0 ? 6 : 4; }

    // x f32 [B, C, H, W] (or packed bits i64 [B, 2, ceil(C / 64), H, W]), weights f32 [O, C, KH, KW], scale and
    // shift f32 [O]; a kernel row's bits fill at most 1024 words in all (the kernels' bound).
    void check_inputs(const Checker& check, const Inputs& in) const override {
        check.element_type("input x", in.types[0], {packed_input_ ? ov::element::i64 : ov::element::f32});
        check.rank("input x", in.shapes[0], packed_input_ ? 5 : 4);
        check.element_type("input weights", in.types[1], {ov::element::f32});
        check.rank("input weights", in.shapes[1], 4);
        const ov::Dimension out_c = in.dim(1, 0), channels = in.dim(1, 1), kh = in.dim(1, 2), kw = in.dim(1, 3);
        const int64_t limits[4] = {INT_LIMIT / 4, INT_LIMIT / 4, MAX_WINDOW, MAX_WINDOW};
        const char* names[4] = {"output channels", "input channels", "kernel height", "kernel width"};
        for (int axis = 0; axis < 4; ++axis)
            if (in.dim(1, axis).is_static())
                check.in_range(std::string("the weights' ") + names[axis], in.dim(1, axis).get_length(), 1, limits[axis]);
        if (channels.is_static() && kh.is_static() && kw.is_static())
            if (kh.get_length() * ((kw.get_length() * channels.get_length() + 63) / 64) > 1024)
                check.fail("input weights", "has shape " + in.shapes[1].to_string() + ": a window of more than 1024 words of bits");
        const char* names_of[6] = {nullptr, nullptr, "input scale", "input shift", "input post_scale", "input post_shift"};
        for (size_t i = 2; i < residual_input(); ++i) {
            const std::string name = names_of[i];
            check.element_type(name, in.types[i], {ov::element::f32});
            check.rank(name, in.shapes[i], 1);
            check.dimension(name, in.shapes[i], 0, out_c, "one value per output channel");
        }
        if (packed_input_) {
            check.dimension("input x", in.shapes[0], 1, 2, "the two bit planes");
            const ov::Dimension words = channels.is_static() ? ov::Dimension((channels.get_length() + 63) / 64) : channels;
            check.dimension("input x", in.shapes[0], 2, words, "the words of the weights' input channels");
        } else {
            check.dimension("input x", in.shapes[0], 1, channels, "the weights' input channels");
        }
    }

    ov::PartialShape output_shape(const Checker& check, const Inputs& in) const override {
        ov::PartialShape out = conv_output(check, in, in.dim(1, 0), in.dim(1, 2), in.dim(1, 3), packed_input_ ? 1 : 0);
        if (pool_ == 0) return out;
        for (int axis = 2; axis < 4; ++axis) {  // the pool's windows: floor(side / 2) of them, at least one
            if (out[axis].is_dynamic()) continue;
            if (out[axis].get_length() < 2)
                check.fail("the conv's output", "has shape " + out.to_string() + "; a 2x2 pool needs 2 rows and columns");
            out[axis] = out[axis].get_length() / 2;
        }
        return out;
    }

    // Weights +-1, scale and shift finite.
    void check_data(const Checker& check, const Inputs& in) const override {
        check.all_signs("input weights", in.values[1]);
        check.all_finite("input scale", in.values[2]);
        check.all_finite("input shift", in.values[3]);
        if (pool_ != 0) {
            check.all_finite("input post_scale", in.values[4]);
            check.all_finite("input post_shift", in.values[5]);
        }
    }

private:
    // Positive-bit plane of the +-1 weights, [kh, word, outs] (kw-major, channel-minor bits per kernel row),
    // packed on the first call and kept while the weights, scale and shift stay the same Constants (their data
    // checked before, check_data; see constant_inputs).
    const uint64_t* packed_weights(const Checker& check, const ov::TensorVector& inputs, const Shape& s) const {
        std::lock_guard<std::mutex> lock(mutex_);
        const std::vector<const void*> from = data_of(inputs, 1, residual_input());
        if (from == packed_from_ && !packed_.empty() && constant_inputs(1, residual_input())) return packed_.data();
        check_data(check, Inputs(inputs));
        const float* w = inputs[1].data<const float>();
        std::vector<uint64_t> bits(static_cast<size_t>(s.kernel_h) * s.words * s.outs, 0);
        for (int o = 0; o < s.out_c; ++o)
            for (int c = 0; c < s.channels; ++c)
                for (int kh = 0; kh < s.kernel_h; ++kh)
                    for (int kw = 0; kw < s.kernel_w; ++kw)
                        if (w[((static_cast<size_t>(o) * s.channels + c) * s.kernel_h + kh) * s.kernel_w + kw] > 0) {
                            const int bit = kw * s.channels + c;
                            bits[(static_cast<size_t>(kh) * s.words + (bit >> 6)) * s.outs + o] |=
                                uint64_t{1} << (bit & 63);
                        }
        packed_.swap(bits);
        packed_from_ = from;
        return packed_.data();
    }

    int64_t one_plane_ = 0;  // 1: sign(0) = +1 (binarize zero: positive)
    int64_t pack_output_ = 0;  // 1, 2: also write y's sign bits under sign(0) = 0, +1
    int64_t packed_input_ = 0;  // 1: input 0 is a BinaryConv2d's sign bits
    int64_t pool_ = 0;  // 2: a fused 2x2 max pool of stride 2 (inputs post_scale, post_shift)
    mutable std::mutex mutex_;
    mutable std::vector<uint64_t> packed_;
    mutable std::vector<const void*> packed_from_;
};

std::vector<ov::Extension::Ptr> binary_conv2d_extensions() { return extensions_of<BinaryConv2d>(); }

}  // namespace slimkit
