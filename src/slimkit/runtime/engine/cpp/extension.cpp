// The library's entry point: core.add_extension(path) calls it and gets every slimkit operator, each for
// OpenVINO's IR reader and for its ONNX frontend, after which OpenVINO reads slimkit's exported models.
#include <vector>

#include <openvino/core/extension.hpp>

#include "operator_base.hpp"

namespace {

std::vector<ov::Extension::Ptr> slimkit_operators() {
    std::vector<ov::Extension::Ptr> all;
    for (const auto& one : {slimkit::binary_conv2d_extensions(), slimkit::sparse_conv2d_extensions(),
                            slimkit::quant_sparse_conv2d_extensions(), slimkit::sparse_linear_extensions(),
                            slimkit::quant_sparse_linear_extensions()})
        all.insert(all.end(), one.begin(), one.end());
    return all;
}

}  // namespace

OPENVINO_CREATE_EXTENSIONS(slimkit_operators())
