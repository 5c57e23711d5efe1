"""The eager backend: numba kernels that run compressed layers inside an ordinary PyTorch model.

`deploy(model, example)` swaps each binary, sparse or pattern-pruned layer for a kernel module
(kernel_modules: packed binary conv/linear, sparse conv/linear, pattern conv) where it is measurably faster on
that layer's real input; the kernels are binary_kernels (bit planes, popcount), sparse_kernels (channel-major
CSR runs) and pattern_kernels (PatDNN's FKW storage, filter groups). numba loads on first use, not on import.
"""

from slimkit.runtime.eager.deploy import deploy, load_deployed, save_deployed

__all__ = ["deploy", "load_deployed", "save_deployed"]
