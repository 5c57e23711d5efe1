"""Real int8 execution: export an 8-bit uniformly quantized model to ONNX with QuantizeLinear/
DequantizeLinear pairs and run it in onnxruntime, whose CPU provider fuses them into integer kernels
(QLinearConv, QLinearMatMul). Needs the optional packages onnx and onnxruntime (`pip install slimkit[onnx]`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.quant.attach import weight_quantization
from slimkit.quant.quantizers import UniformQuantizer


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise SlimkitError("ONNX export needs the optional packages: pip install onnx onnxruntime") from None
    return onnxruntime


def check_exportable(model: nn.Module) -> None:
    """Only 8-bit uniform quantizers map onto ONNX's int8/uint8 Q/DQ operators."""
    for name, module in model.named_modules():
        wq = weight_quantization(module)
        if wq is None:
            continue
        for role, q in (("weight", wq.quantizer), ("input", getattr(module, "input_quantizer", None))):
            if not isinstance(q, UniformQuantizer) or q.bits != 8:
                raise SlimkitError(f"layer '{name}': its {role} quantizer is {type(q).__name__} at "
                                   f"{getattr(q, 'bits', '?')} bits; ONNX int8 export needs 8-bit uniform "
                                   f"quantization (quantize: {{method: uniform, bits: 8}})")


def export_onnx(model: nn.Module, path: str | Path, input_shape: Sequence[int], *, quantized: bool = True) -> Path:
    """Write `model` (eval mode, batch dimension dynamic) to `path`. With `quantized`, check it is 8-bit
    uniform first, so the file holds Q/DQ pairs that onnxruntime runs in int8."""
    if quantized:
        check_exportable(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    example = torch.randn(1, *input_shape)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    finally:
        model.train(was_training)
    return path


class OnnxModel:
    """An onnxruntime session with a fixed thread count, called like a model on numpy or torch input."""

    def __init__(self, path: str | Path, threads: int = 2):
        ort = _require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        array = x.detach().numpy() if isinstance(x, torch.Tensor) else x
        return torch.from_numpy(self.session.run(None, {self.input: array.astype(np.float32)})[0])

    def eval(self) -> OnnxModel:
        """Lets the latency harness treat a session like an nn.Module."""
        return self

    def train(self, mode: bool = True) -> OnnxModel:
        return self

    @property
    def training(self) -> bool:
        return False


def integer_kernels(path: str | Path) -> list[str]:
    """The integer operators onnxruntime runs after its graph optimisations (QLinearConv, ...)."""
    ort = _require_onnxruntime()
    import onnx

    optimized = Path(path).with_suffix(".optimized.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = sorted({n.op_type for n in onnx.load(str(optimized)).graph.node if n.op_type.startswith(("QLinear",
                                                                                                     "MatMulInteger",
                                                                                                     "ConvInteger"))})
    optimized.unlink(missing_ok=True)
    return ops
