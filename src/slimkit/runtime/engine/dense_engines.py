"""The dense engines a CPU user deploys with, as baselines: onnxruntime fp32, onnxruntime int8 (its own
`quantize_static`: QDQ format, per-channel weights, the three lines a user would write) and OpenVINO fp32
and int8 (OpenVINO runs the same QDQ model with its int8 kernels). Each is callable like a model, so
`compare_latency` times them against torch forms in one process, taking turns, with the same thread count;
onnxruntime's intra-op threads do not spin between calls, so the engine timed next does not pay for them.

onnxruntime and OpenVINO are optional: a missing one is reported by name, never silently skipped.

Precision: OpenVINO's CPU plugin picks its inference precision from the CPU (bf16 on AVX-512 BF16 and AMX
CPUs such as Zen 4 and Sapphire Rapids), so a model compiled without a pin is not the fp32 model it was
given. Every OpenVINO model here says the precision it ran (`OpenVinoModel.precision`, read back from the
compiled model); slimkit's own artifact and every exactness check pin f32 (`PINNED_F32`); a dense baseline
is timed as a user gets it (the CPU's default) and, where that default is not f32, pinned to f32 too, each
named by what it ran.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from slimkit.capture import Example, example_inputs
from slimkit.errors import SlimkitError
from slimkit.quant.onnx_export import OnnxModel, engine_array, export_onnx


class _Engine:
    """A compiled engine model that the latency harness treats like an eval-mode nn.Module."""

    training = False

    def eval(self) -> _Engine:
        return self

    def train(self, mode: bool = True) -> _Engine:
        return self


@cache
def shared_core() -> Any:
    """The process's one OpenVINO Core. Each Core's CPU plugin points the thread's alternate signal stack at
    memory of its own and, when it goes, restores the one it found: Cores dropped in the order they were made
    leave it pointing at freed memory, and the next Python signal handler (Ctrl-C, pytest's timeout, a
    DataLoader worker's exit) kills the process with SIGSEGV. One Core that lives as long as the process
    never leaves it dangling."""
    import openvino as ov

    return ov.Core()


PRECISION_HINT = "INFERENCE_PRECISION_HINT"
PINNED_F32 = {PRECISION_HINT: "f32"}  # the config (and IR runtime option) that makes OpenVINO compute in fp32
PRECISION_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}  # OpenVINO's element types, as forms name them


def precision_of(compiled: Any) -> str:
    """The precision a compiled OpenVINO model computes its floating-point nodes in: fp32, bf16 or fp16."""
    name = compiled.get_property(PRECISION_HINT).get_type_name()
    if name not in PRECISION_NAMES:
        raise SlimkitError(f"OpenVINO reports an inference precision slimkit does not know: {name}")
    return PRECISION_NAMES[name]


def runtime_options(model: Any) -> dict[str, str]:
    """The runtime options an IR carries in its rt_info (`<runtime_options>`), such as slimkit's f32 pin.
    OpenVINO 2026.4 applies only a few of them by itself (not the precision hint), so slimkit passes them on."""
    if not model.has_rt_info(["runtime_options"]):
        return {}
    return {str(key): value.astype(str) for key, value in model.get_rt_info()["runtime_options"].items()}


class OpenVinoModel(_Engine):
    """An OpenVINO CPU model compiled for one input shape with a fixed thread count and latency hint; pass
    `core` (engine.export.openvino_core()) for a model that holds slimkit's operators. `pin_f32` (the default)
    computes in fp32 whatever the CPU's default; False compiles as a user's plain `compile_model` would,
    apart from the runtime options the IR carries. `precision` says what it ran."""

    def __init__(self, path: Path, shape: Sequence[int] | Mapping[str, Sequence[int]], threads: int, core: Any = None,
                 pin_f32: bool = True):
        core = core or shared_core()
        model = core.read_model(str(path))
        model.reshape({k: list(v) for k, v in shape.items()} if isinstance(shape, Mapping) else list(shape))
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", **runtime_options(model),
                  **(PINNED_F32 if pin_f32 else {})}
        self.compiled = core.compile_model(model, "CPU", config)
        self.precision = precision_of(self.compiled)
        self.request = self.compiled.create_infer_request()

    def __call__(self, *tensors: Tensor, **named: Tensor) -> Tensor:
        """The output on inputs given in the model's order, or by name (a dict example's keywords)."""
        feed: dict[int | str, np.ndarray] = {i: engine_array(t) for i, t in enumerate(tensors)}
        feed.update({k: engine_array(t) for k, t in named.items()})
        self.request.infer(feed)
        return torch.from_numpy(self.request.get_output_tensor(0).data.copy())


class _Calibration:
    """onnxruntime's CalibrationDataReader over a list of input batches: tensors (the input named 'input', as
    the TorchScript export names it) or dicts of tensors by input name."""

    def __init__(self, batches: Sequence[Tensor | Mapping[str, Tensor]]):
        self.items = iter([{k: engine_array(v) for k, v in (b.items() if isinstance(b, Mapping) else [("input", b)])}
                           for b in batches])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def quantize_static_int8(fp32: Path, out: Path, calibration: Sequence[Tensor | Mapping[str, Tensor]],
                         symbolic_shapes: bool = True) -> Path:
    """onnxruntime's own post-training int8 as its documentation does it: `quant_pre_process` (shape
    inference, graph optimisation), then `quantize_static` with QDQ and per-channel weights. `symbolic_shapes`
    False skips its symbolic shape inference (its documented option), for a model captured by torch.export (a
    tuple or dict example): on HF models' graphs it gives up with a bare Exception and leaves
    sym_shape_infer_temp.onnx and its weights in the working directory."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = out.with_name(out.stem + "-prepared.onnx")
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # its advice to pre-process is taken; the rest is noise here
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=not symbolic_shapes)
        quantize_static(str(prepared), str(out), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        logger.setLevel(level)
    return out


def export_dense(model: nn.Module, example: Example, calibration: Sequence[Tensor | Mapping[str, Tensor]],
                 workdir: Path) -> dict[str, Path | str]:
    """The dense model as ONNX fp32 and as onnxruntime's int8, captured from `example` (a per-sample shape, or an
    input as slimkit.capture takes it: token ids and a mask for a transformer); a value that is a string says why
    a form is missing (an optional package not installed, an export that failed)."""
    try:
        fp32 = export_onnx(model, workdir / "dense-fp32.onnx", example)
    except Exception as exc:  # the exporter's failures are many and not ours to enumerate
        return {"fp32": f"ONNX export failed: {type(exc).__name__}: {exc}"[:200],
                "int8": "needs the fp32 export"}
    out: dict[str, Path | str] = {"fp32": fp32}
    try:
        out["int8"] = quantize_static_int8(fp32, workdir / "dense-int8.onnx", calibration,
                                           symbolic_shapes=not example_inputs(example).torch_export)
    except (ImportError, SlimkitError):
        out["int8"] = "onnxruntime is not installed"
    return out


def dense_engines(exported: dict[str, Path | str], shape: Sequence[int] | Mapping[str, Sequence[int]],
                  threads: int) -> dict[str, Any]:
    """{form: engine} for one input shape (batch included; each input's by name for a dict example): ort_fp32,
    ort_int8, and the OpenVINO forms named by what they compute: openvino_fp32 and openvino_int8 (the rest of the
    graph in fp32) as the CPU's default compiles them, and where that default is not fp32 (bf16, say) the same
    models as a user gets them too, openvino_bf16 and openvino_int8+bf16. A form that cannot be built appears as
    '<form>_error' with the reason."""
    engines: dict[str, Any] = {}
    for kind, path in exported.items():
        for engine in ("ort", "openvino"):
            form = f"{engine}_{kind}"
            if isinstance(path, str):
                engines[f"{form}_error"] = path
                continue
            try:
                if engine == "ort":
                    engines[form] = OnnxModel(path, threads)
                    continue
                default = OpenVinoModel(path, shape, threads, pin_f32=False)
                if default.precision != "fp32":  # a user's plain compile_model; then the same model pinned to fp32
                    as_given = f"openvino_{default.precision}" if kind == "fp32" else f"{form}+{default.precision}"
                    engines[as_given] = default
                    default = OpenVinoModel(path, shape, threads)
                engines[form] = default
            except (ImportError, SlimkitError) as exc:
                missing = isinstance(exc, ImportError)
                engines[f"{form}_error"] = f"{'onnxruntime' if engine == 'ort' else 'openvino'} is not installed" \
                    if missing else str(exc)
    return engines
