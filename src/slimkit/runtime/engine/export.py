"""Compressed models as OpenVINO models with slimkit's operators inside: the deployable artifact.

`export_openvino` writes a model's engine form (form.engine_form) as ONNX, reads it into OpenVINO with
slimkit's operator library (engine/cpp, built by the set-up: see build) and saves an OpenVINO IR
(`model.xml` + `model.bin`), which plain OpenVINO runs once the library is added:

    core = openvino.Core(); core.add_extension("libslimkit_openvino.so")
    core.compile_model(core.read_model("model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

(The IR also carries the f32 pin as a runtime option, but OpenVINO 2026.4 applies only a few runtime options
from an IR by itself, not the precision hint, so the pin must be passed when compiling.)

Which layers become operators, by measurement, is layer_choice's; the deployable folder is artifact's. Every
other layer is OpenVINO's own. Binary window sums are exact (two bit planes, or one under sign(0) = +1);
folded epilogues round once where eval rounds twice, so whole networks agree within float rounding.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

from torch import nn

from slimkit.capture import Example, example_inputs
from slimkit.deprecation import renamed_keyword
from slimkit.errors import SlimkitError, first_line
from slimkit.files import atomic_write
from slimkit.quant.int8_graph import Batch
from slimkit.quant.onnx_export import export_onnx
from slimkit.runtime.engine.build import require_library
from slimkit.runtime.engine.dense_engines import PINNED_F32, shared_core
from slimkit.runtime.engine.form import candidates, engine_form, prepared
from slimkit.runtime.engine.operator_modules import EngineConv
from slimkit.runtime.engine.operators import DOMAIN
from slimkit.runtime.engine.quant_linear import TRANSLATIONS, QuantSparseLinear
from slimkit.runtime.engine.transformer_form import linear_candidates, swap_linears

LIBRARY_NAME = "libslimkit_openvino.so"  # the name the library has beside an exported model
NO_OPERATORS_FROM_TORCH_EXPORT = ("OpenVINO's own kernel: a tuple or dict example is captured by torch.export, "
                                  "where slimkit's only operator is the int8 linear one (transformer_form)")


@cache
def openvino_core() -> Any:
    """The process's OpenVINO Core (dense_engines.shared_core) with slimkit's operators added, once."""
    core = shared_core()
    core.add_extension(str(require_library()))
    return core


@renamed_keyword("input_shape", "example")  # its name until 0.2
def export_openvino(model: nn.Module, path: str | Path, example: Example,
                    calibration: Iterable[Batch] | None = None, chosen: Collection[str] | None = None,
                    ) -> dict[str, Any]:
    """Write `model` in its engine form (the `chosen` candidate layers as operators; None: every candidate) as
    OpenVINO IR at `path` (.xml, with its .bin beside it), each file atomically (a quantized model needs
    `calibration` where it has an integer graph, see form.engine_form), captured from `example` (see
    slimkit.capture: a per-sample shape, a tensor, a tuple or a dict of tensors). A tuple or dict example is
    captured by torch.export, where the chosen block-sparse int8 linear layers become slimkit::QuantSparseLinear
    (transformer_form; None: every such candidate) and every other layer is OpenVINO's own (int8 where the model
    is quantized), each candidate's line saying so. The IR carries the f32 precision pin as a runtime option.
    Returns what was written and which layers run slimkit's operators."""
    import openvino as ov

    path = Path(path)
    if path.suffix != ".xml":
        raise SlimkitError(f"an OpenVINO model is written as .xml (+ .bin); got {path}")
    inputs = example_inputs(example)
    if inputs.torch_export:
        engine = prepared(model, calibration)
        others = [name for name in candidates(engine) if name not in linear_candidates(engine)]
        lines = swap_linears(engine, linear_candidates(engine) if chosen is None else chosen)
        layers = [*lines.values(), *({"layer": name, "engine": "OpenVINO", "reason": NO_OPERATORS_FROM_TORCH_EXPORT}
                                     for name in others)]
        uses_ours = any(isinstance(m, QuantSparseLinear) for m in engine.modules())
    else:
        engine, layers = engine_form(model, tuple(inputs.tensors[0].shape[1:]), calibration, chosen)
        uses_ours = any(isinstance(m, EngineConv) for m in engine.modules())
    core = openvino_core()
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_path = path.with_suffix(".onnx.tmp")
    staging = path.with_name(path.stem + ".staging.xml")
    try:
        try:
            export_onnx(engine, onnx_path, example, custom_opsets={DOMAIN: 1} if uses_ours else None,
                        translations=TRANSLATIONS if uses_ours and inputs.torch_export else None)
            ir = core.read_model(str(onnx_path))
            for node in ir.get_ordered_ops():  # each operator node named after its layer (profiles name layers)
                if node.get_type_info().version_id == DOMAIN:
                    node.set_friendly_name(node.get_attributes()["layer"])
            for key, value in PINNED_F32.items():  # what OpenVINO must be told to compute exactly (see load lines)
                ir.set_rt_info(value, ["runtime_options", key])
            ov.save_model(ir, str(staging), compress_to_fp16=False)
        except SlimkitError:  # the capture's own, naming the op
            raise
        except Exception as exc:  # the exporter's and OpenVINO's failures are many; each names its op
            raise SlimkitError(f"exporting to OpenVINO failed: {type(exc).__name__}: {first_line(exc)}") from None
        for source, target in ((staging.with_suffix(".bin"), path.with_suffix(".bin")), (staging, path)):
            copy_atomically(source, target)
    finally:
        for leftover in (onnx_path, staging, staging.with_suffix(".bin")):
            leftover.unlink(missing_ok=True)
    return {"model": str(path), "weights": str(path.with_suffix(".bin")), "library": str(require_library()),
            "precision": "fp32", "capture": "torch.export" if inputs.torch_export else "TorchScript",
            "slimkit_layers": layers}


def copy_atomically(source: Path, target: Path) -> None:
    """`source`'s bytes at `target`, written as slimkit.files.atomic_write does: no reader sees half a file."""
    data = source.read_bytes()

    def write(f: BinaryIO) -> None:
        f.write(data)

    atomic_write(target, write)
