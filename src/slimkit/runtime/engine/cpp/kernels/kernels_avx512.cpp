// The kernels built for one instruction set (see engine/build.py: ISA_FLAGS).
#define SLIMKIT_ISA avx512
#include "binary_kernel.hpp"
#include "sparse_kernel.hpp"
#include "quant_sparse_kernel.hpp"
#include "quant_u8_kernel.hpp"
