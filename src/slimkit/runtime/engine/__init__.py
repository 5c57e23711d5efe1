"""The engine backend: the deployable artifact, an OpenVINO model with slimkit's C++ operators inside, and the
dense engines every speed-up is measured against.

- operators: the operators' torch faces (an autograd Function per operator: its forward computes the
  operator in torch, its symbolic writes the custom ONNX node);
- operator_modules: the Engine* layer modules a trained layer becomes, with fusable epilogues;
- fusion: the torch.fx passes that fuse epilogues into operators and link one operator to the next;
- form: `engine_form` and `runs_slimkit_operators`, which layers become operators;
- export: `export_openvino`, `export_folder` and `openvino_core`;
- profile: `node_times` and `profile_openvino`, OpenVINO's per-node counters;
- build: compiles the C++ in cpp/ into the operator library (`python -m slimkit.runtime.engine.build`, run by
  the set-up), finds it, and asks it for its instruction-set level and int8 peak;
- dense_engines: onnxruntime and OpenVINO fp32/int8 baselines, and the process's one OpenVINO Core.

Import each name from its module (`from slimkit.runtime.engine.export import export_openvino`). This file
imports nothing, so `python -m slimkit.runtime.engine.build` runs the build module once, as __main__, and not
beside a copy the package imported first.
"""
