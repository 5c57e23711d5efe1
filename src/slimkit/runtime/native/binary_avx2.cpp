#define SLIMKIT_ISA avx2
#include "binary_kernel.hpp"
