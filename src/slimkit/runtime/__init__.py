"""The CPU runtime: compressed models made fast, by two backends that share nothing but weight layouts.

- `runtime.eager`: numba kernels inside an ordinary PyTorch model; `deploy` (also `slimkit.deploy`) swaps in
  each one where it is measurably faster, and `save_deployed`/`load_deployed` keep those decisions.
- `runtime.engine`: the deployable artifact, an OpenVINO model with slimkit's C++ operators inside (the torch
  faces of the operators, their layer modules, the fusion passes, export, profiling, the C++ and its build),
  and the dense onnxruntime/OpenVINO engines every speed-up is measured against.
- `runtime.layouts`: the CSR weight layouts both build from (numpy only).
- `runtime.bench`: `slimkit bench`, the one module that uses both backends, to time them against each other.

eager and engine never import each other (scripts/check_imports.py checks it).
"""

from slimkit.runtime.eager.deploy import deploy, load_deployed, save_deployed

__all__ = ["deploy", "load_deployed", "save_deployed"]
