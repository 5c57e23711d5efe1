"""The metrics.json a report is rendered from, as a schema: every field `Report` and its plots read, with its
kind. `slimkit report RUN` re-renders a folder that may have been edited or damaged since the run wrote it,
so the file is checked against this before anything is rendered, and a field that is missing or of another
kind is an error naming the file and the field's path, not a KeyError or a format error mid-report. Keys the
report does not read are allowed (and kept), so runs from earlier versions still render."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, Tag, ValidationError, model_validator

from slimkit.config import describe_errors
from slimkit.errors import SlimkitError


class Loose(BaseModel):
    """Strict kinds (a string is never read as a number, nor a number as a boolean), extra keys kept."""

    model_config = ConfigDict(extra="allow", strict=True)


class Median(Loose):
    median: float


class Layer(Loose):
    name: str
    type: str
    shape: list[int]
    params: int
    nonzeros: int
    sparsity: float
    macs: int
    effective_macs: int
    weight_bits: int
    input_bits: int


class Measurement(Loose):
    sparsity: float
    nonzeros: int
    compressed_bytes: float
    effective_macs: float
    bops: float
    fp_macs: float
    ops: float
    threads: int
    latency_ms: dict[str, Median] = {}
    layers: list[Layer]


class Epoch(Loose):
    epoch: int
    train_loss: float


class Phase(Loose):
    test_loss: float
    best_epoch: int | None
    train_seconds: float
    history: list[Epoch]
    measurement: Measurement


class Models(Loose):
    dense: Phase
    compressed: Phase


class MetricName(Loose):
    name: str
    higher_is_better: bool


class Objective(Loose):
    metric: MetricName | None


class Data(Loose):
    name: str
    train: int
    val: int | None
    test: int | None
    eval_split: str = "test"
    input_shape: list[int] | dict[str, list[int]]
    note: str | None = None


class Stage(Loose):
    method: str | None = None
    target_sparsity: float | None = None
    dense_sparsity: float | None = None
    achieved_sparsity: float | None = None

    @model_validator(mode="after")
    def _sparsity_row(self) -> Stage:
        if self.achieved_sparsity is not None and None in (self.method, self.target_sparsity, self.dense_sparsity):
            raise ValueError("a stage with achieved_sparsity also needs method, target_sparsity and dense_sparsity")
        return self


class Environment(Loose):
    seed: int


class Failed(Loose):
    """A section (engine, a hardware target) that could not be computed, with the reason."""

    error: str


class Speedup(Loose):
    baseline: str
    speedup: float


class ProfileRow(Loose):
    node: str
    kernel: str
    nodes: int
    ms: float


class EngineBatch(Loose):
    latency_ms: dict[str, Median]
    engine_vs: dict[str, Speedup | None]
    engine_profile: list[ProfileRow]

    @model_validator(mode="after")
    def _baseline_timed(self) -> EngineBatch:
        best = self.engine_vs.get("best_dense")
        missing = [k for k in ("engine", best.baseline if best else None) if k and k not in self.latency_ms]
        if missing:
            raise ValueError(f"latency_ms has no {missing[0]!r}, which engine_vs compares")
        return self


class EngineLayer(Loose):
    layer: str
    engine: str
    fused: list[str] = []
    reason: str = ""


class Engine(Loose):
    artifact: str
    threads: int
    cpu_model: str = "unknown"
    isa: list[str] = []
    batches: dict[str, EngineBatch]
    slimkit_layers: list[EngineLayer]


class SystolicConfig(Loose):
    rows: int
    cols: int
    dataflow: str
    weight_bits: int
    activation_bits: int
    input_buffer_kib: float
    weight_buffer_kib: float
    output_buffer_kib: float
    dram_bytes_per_cycle: float
    batch: int
    skip_zero_weights: bool
    activation_sparsity: bool


class Cycles(Loose):
    cycles: float
    stall_free_cycles: float | None = None  # absent in runs from before the lockstep model
    weight_stall_cycles: float
    activation_stall_cycles: float
    utilization: float
    dram_bytes: float


class LayerCycles(Cycles):
    name: str
    bound: str
    weight_format: str | None = None


class SystolicTotals(Cycles):
    bandwidth_bound_layers: int | None = None


class SystolicModel(Loose):
    totals: SystolicTotals
    layers: list[LayerCycles]


class Systolic(Loose):
    config: SystolicConfig
    reference: str
    dense: SystolicModel
    compressed: SystolicModel
    compressed_rearranged: SystolicModel | None = None

    @model_validator(mode="after")
    def _same_layers(self) -> Systolic:
        for other in (self.compressed, self.compressed_rearranged):
            if other is not None and len(other.layers) != len(self.dense.layers):
                raise ValueError("dense, compressed and rearranged list different numbers of layers")
        return self


class LutLayer(Loose):
    name: str
    kind: str = "layer"
    levels: int | None = None  # absent in runs from before logic levels were costed
    registers: int | None = None
    input_bits: int
    output_bits: int
    max_fan_in: int
    mean_fan_in: float
    max_address_bits: int
    luts: float
    feasible: bool


class LutTotals(Loose):
    luts: float
    registers: int | None = None
    levels: int | None = None


class LutConfig(Loose):
    max_table_bits: int


class Lut(Loose):
    layers: list[LutLayer]
    totals: LutTotals
    config: LutConfig


class Encoded(Loose):
    energy_pj: float
    lane_area_um2: float | None = None


class SignMagnitude(Encoded):
    magnitude_bits: int


class Csd(Encoded):
    nonzero_digits: int


class ArithmeticLayer(Loose):
    name: str
    form: str
    max_fan_in: int
    adder_tree_depth: int
    accumulator_bits: int
    ops: dict[str, float]
    energy_pj: float
    compute_energy_pj: float | None = None  # absent in runs from before operand reads were priced
    lane_area_um2: float | None = None
    dense_float_energy_pj: float
    sign_magnitude: SignMagnitude | None = None
    csd: Csd | None = None


class ArithmeticTotals(Loose):
    energy_pj: float
    compute_energy_pj: float | None = None
    lane_area_um2: float | None = None
    dense_float_energy_pj: float
    sign_magnitude_energy_pj: float | None = None
    csd_energy_pj: float | None = None


class Arithmetic(Loose):
    source: str
    layers: list[ArithmeticLayer]
    totals: ArithmeticTotals

    @model_validator(mode="after")
    def _encoded_totals(self) -> Arithmetic:
        encoded = any(layer.sign_magnitude and layer.csd for layer in self.layers)
        if encoded and None in (self.totals.sign_magnitude_energy_pj, self.totals.csd_energy_pj):
            raise ValueError("layers stored sign-magnitude and CSD need totals.sign_magnitude_energy_pj and "
                             "totals.csd_energy_pj")
        return self


Section = TypeVar("Section", bound=Loose)

# `Section`, or Failed where the section holds an 'error': told apart by that key, so a mismatch is reported
# against the one form the section claims to be. A generic alias (ComputedOrFailed[Lut]), so that type checkers
# read it as Failed | Lut while pydantic sees the tagged union.
ComputedOrFailed = Annotated[
    Annotated[Failed, Tag("failed")] | Annotated[Section, Tag("computed")],
    Discriminator(lambda v: "failed" if isinstance(v, dict) and "error" in v else "computed")]


class Hardware(Loose):
    systolic: ComputedOrFailed[Systolic] | None = None
    lut: ComputedOrFailed[Lut] | None = None
    arithmetic: ComputedOrFailed[Arithmetic] | None = None


class Metrics(Loose):
    recipe: str
    model: str
    reference: Literal["trained", "given"] | None = None
    objective: Objective | None = None
    data: Data
    models: Models
    stages: list[Stage] = []
    environment: Environment
    engine: ComputedOrFailed[Engine] | None = None
    hardware: Hardware | None = None

    @model_validator(mode="after")
    def _metric_and_batches(self) -> Metrics:
        """The task metric's keys, in every phase and epoch record, and the dense latency of every batch the
        compressed model was timed at: what the report's rows pair up."""
        metric = "acc" if self.objective is None else self.objective.metric.name if self.objective.metric else None
        for phase, result in (("dense", self.models.dense), ("compressed", self.models.compressed)):
            if metric is not None and not _number((result.model_extra or {}).get(f"test_{metric}")):
                raise ValueError(f"models.{phase}.test_{metric} must be a number (the run's metric is {metric})")
            records = [r.model_extra or {} for r in result.history]
            keys = [f"train_{metric}"] if metric else []
            keys += [k for k in ("val_loss", f"val_{metric}" if metric else None) if k and records and k in records[0]]
            for i, record in enumerate(records):
                bad = next((k for k in keys if not _number(record.get(k))), None)
                if bad is not None:
                    raise ValueError(f"models.{phase}.history[{i}].{bad} must be a number")
        dense_batches, compressed_batches = (self.models.dense.measurement.latency_ms,
                                             self.models.compressed.measurement.latency_ms)
        missing = sorted(set(compressed_batches) - set(dense_batches))
        if missing:
            raise ValueError(f"models.dense.measurement.latency_ms lacks batch {missing[0]}, which the compressed "
                             f"model was timed at")
        return self


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_metrics(path: Path) -> dict[str, Any]:
    """The mapping in a run's metrics.json once it has the schema above; a SlimkitError naming the file and
    every field that does not fit otherwise."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise SlimkitError(f"{path} is not a metrics file: not valid JSON ({exc})") from None
    try:
        Metrics.model_validate(data)
    except ValidationError as exc:
        issues = "; ".join(describe_errors(exc, Metrics))
        raise SlimkitError(f"{path} does not hold the metrics of a slimkit run: {issues}") from None
    return data
