"""The `target:` section of a recipe: the speed-up to reach, against which baseline, at which batch size and
thread count, the largest accuracy drop allowed, and the forms each layer may take."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from slimkit import binary  # noqa: F401  (the binarize methods register on import)
from slimkit.config import StrictModel
from slimkit.methods import methods

Baseline = Literal["best_dense", "best_fp32", "best_int8", "ort_fp32", "ort_int8", "openvino_fp32", "openvino_int8"]


class TargetConfig(StrictModel):
    """Compress to a measured speed-up: slimkit times each layer's candidate forms on this CPU (target.tables),
    scores each form by the loss it costs on calibration batches (target.sensitivity), picks one form per layer
    (target.solver) and writes the per-layer recipe that the run then fine-tunes, exports and measures."""

    speedup: float = Field(gt=1, description="the speed-up to reach over `baseline`, measured at `batch`")
    baseline: Baseline = Field("best_dense", description="what the speed-up is over: the best dense engine "
                               "(onnxruntime and OpenVINO, fp32 and int8, timed in the same run), the best fp32 or "
                               "int8 one, or one engine by name")
    batch: int = Field(1, ge=1, description="the batch size every table and the final artifact are timed at")
    threads: int | None = Field(None, ge=1, description="threads for every timing (default: the machine's)")
    max_accuracy_drop: float | None = Field(
        None, ge=0, description="the largest drop of the metric (dense minus compressed) the run may end with; a "
        "run that drops more says so in its report")
    int8: bool = Field(True, description="8-bit forms (dense int8, and block-sparse int8 at `sparsities`)")
    widths: list[float] = Field(default_factory=lambda: [0.75, 0.5, 0.25], validate_default=True,
                                description="fractions of each channel group's width to try, rounded to round_to")
    round_to: Literal[8, 16] = Field(8, description="channel widths are multiples of this (the kernels' vectors)")
    sparsities: list[float] = Field(default_factory=lambda: [0.5, 0.75, 0.9], validate_default=True,
                                    description="block-sparse int8 (blocks of 4 input channels) at these sparsities")
    binary: str | None = Field(None, description="a binarize method (xnor, irnet, ...) whose binary convs a layer may "
                               "become; null: no binary forms")
    calibration_batches: int = Field(4, ge=1, description="training batches the sensitivities are measured on")
    repeats: int = Field(9, ge=3, description="timed samples per form (interleaved); median and IQR are kept")

    @field_validator("widths", "sparsities")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if any(not 0 < v < 1 for v in values):
            raise ValueError(f"every entry lies strictly between 0 and 1; got {values}")
        return sorted(set(values), reverse=True)

    @field_validator("binary")
    @classmethod
    def _binary_method(cls, method: str | None) -> str | None:
        if method is not None and method not in methods("binarize"):
            raise ValueError(f"{method!r} is not a binarize method; allowed: {', '.join(methods('binarize'))}")
        return method
