"""The engine backend: the deployable artifact, an OpenVINO model with slimkit's C++ operators inside, and the
dense engines every speed-up is measured against.

- operators: the operators' torch faces (an autograd Function per operator: its forward computes the
  operator in torch, its symbolic writes the custom ONNX node);
- operator_modules: the Engine* layer modules a trained layer becomes, with fusable epilogues;
- fusion: the torch.fx passes that fuse epilogues into operators and link one operator to the next;
- form: `candidates` (the layers an operator can take), `engine_form` (a model with chosen ones as operators)
  and `runs_slimkit_operators`;
- export: `export_openvino` (an engine form as OpenVINO IR, fp32 pinned) and `openvino_core`;
- layer_choice: which layers become operators, by timing each one both ways on this CPU, then whole artifacts
  (`export_measured`): never slower than the dense model in the same engine;
- artifact: `export_folder` (the deployable folder: IR, library, engine.json with digests and every layer's
  measured choice, swapped into place whole) and `load_folder` (checks it, runs the installed operators);
- profile: `node_times` and `profile_openvino`, OpenVINO's per-node counters;
- build: compiles the C++ in cpp/ into the operator library (`python -m slimkit.runtime.engine.build`, run by
  the set-up), finds it, and asks it which kernel builds the CPU runs, which kernels its tuner chose, and the
  int8 kernels' peaks;
- dense_engines: onnxruntime and OpenVINO fp32/int8 baselines, and the process's one OpenVINO Core.

Import each name from its module (`from slimkit.runtime.engine.export import export_openvino`). This file
imports nothing, so `python -m slimkit.runtime.engine.build` runs the build module once, as __main__, and not
beside a copy the package imported first.
"""
