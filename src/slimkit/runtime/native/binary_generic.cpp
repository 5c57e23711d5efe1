#define SLIMKIT_ISA generic
#include "binary_kernel.hpp"
