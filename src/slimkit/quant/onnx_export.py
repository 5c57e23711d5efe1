"""Real int8 execution: export an 8-bit uniformly quantized model to ONNX with QuantizeLinear/
DequantizeLinear pairs and run it in onnxruntime, whose CPU provider fuses them into integer kernels
(QLinearConv, QGemm, QLinearAdd, QLinearGlobalAveragePool). Needs the optional packages onnx and
onnxruntime (`pip install slimkit[onnx]`).
"""

from __future__ import annotations

import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from slimkit.capture import Example, capture, example_inputs, write_onnx
from slimkit.deprecation import renamed_keyword
from slimkit.errors import SlimkitError
from slimkit.quant.frozen import frozen_quantizers
from slimkit.quant.int8_graph import Batch, int8_form, is_quantized


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise SlimkitError("ONNX export needs the optional packages: pip install onnx onnxruntime") from None
    return onnxruntime


@renamed_keyword("input_shape", "example")  # its name until 0.2
def export_onnx(model: nn.Module, path: str | Path, example: Example,
                calibration: Iterable[Batch] | None = None, custom_opsets: dict[str, int] | None = None,
                translations: Mapping[Any, Any] | None = None) -> Path:
    """Write `model` (eval mode) to `path`, captured from `example` (capture.Example: a per-sample shape, a tensor,
    a tuple or a dict of tensors such as token ids and an attention mask), batch dimension dynamic, sequence too
    where the model allows (see slimkit.capture). `custom_opsets` names the domains of custom operators the model
    emits (slimkit's engine operators) for the TorchScript exporter; `translations`, the onnxscript functions that
    write custom torch operators for the dynamo exporter (a tuple or dict example). A quantized model is written
    as its int8 form (int8_graph.int8_form): its integer graph where torch.fx traces it (BatchNorm folded, every
    tensor quantized; the quantizers it adds are calibrated on the `calibration` batches, tensors or dicts), so
    onnxruntime runs every layer in int8; else the model's own quantizers as Q/DQ around each quantized layer."""
    inputs = example_inputs(example)
    if is_quantized(model):
        model = int8_form(model, calibration)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if inputs.torch_export:
        return write_onnx(capture(frozen_quantizers(model), inputs), inputs, path, translations)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, inputs.tensors, str(path), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              custom_opsets=custom_opsets)
    finally:
        model.train(was_training)
    return path


def engine_array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """An input as an engine takes it: floats as float32 (what the exported graphs compute in), integers (token
    ids, masks) as they are."""
    array = x.detach().numpy() if isinstance(x, torch.Tensor) else x
    return array.astype(np.float32, copy=False) if np.issubdtype(array.dtype, np.floating) else array


class OnnxModel:
    """An onnxruntime session with a fixed thread count, called like a model on numpy or torch input."""

    precision = "fp32"  # the CPU provider computes every float node in fp32 (no automatic bf16, unlike OpenVINO)

    def __init__(self, path: str | Path, threads: int = 2):
        ort = _require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no spin into the next timing
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, *tensors: torch.Tensor | np.ndarray, **named: torch.Tensor | np.ndarray) -> torch.Tensor:
        """The first output on inputs given in the session's order, or by name (a dict example's keywords)."""
        feed = {**dict(zip(self.inputs, tensors, strict=False)), **named}
        return torch.from_numpy(self.session.run(None, {k: engine_array(v) for k, v in feed.items()})[0])

    def eval(self) -> OnnxModel:
        """Lets the latency harness treat a session like an nn.Module."""
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        return self

    @property
    def training(self) -> bool:
        return False


FLOAT_COMPUTE_OPS = ("Conv", "Gemm", "MatMul", "Add", "Mul", "AveragePool", "GlobalAveragePool")


def optimized_ops(path: str | Path) -> dict[str, int]:
    """How many of each operator onnxruntime runs after its graph optimisations: integer kernels (QLinearConv,
    QGemm, QLinearAdd, ...) where it fused Q/DQ pairs, float ones (FLOAT_COMPUTE_OPS) where it could not."""
    ort = _require_onnxruntime()
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return dict(sorted(Counter(n.op_type for n in onnx.load(str(optimized)).graph.node).items()))
