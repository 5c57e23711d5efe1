#define SLIMKIT_ISA avx512
#include "binary_kernel.hpp"
