"""The CPU runtime: numba kernels that turn binarization and sparsity into measured speed, and `deploy`."""

from slimkit.runtime.deploy import deploy, load_deployed, save_deployed

__all__ = ["deploy", "load_deployed", "save_deployed"]
