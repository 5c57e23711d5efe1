"""Hardware the compression methods target, as analytical cost models computed from the model itself.

- `systolic`: cycles (PEs in lockstep, and the stall-free bound), PE utilisation and DRAM traffic on an R x C
  systolic array (Sense's mapping, weight- or output-stationary), for dense, unstructured, balanced and N:M
  weights, with measured activation sparsity and with or without Sense's channel rearrangement.
- `lut`: truth-table size, LUT6 count, logic levels and pipeline registers of every neuron (LogicNets) or
  sub-network partition (NeuraLUT); `truth_tables`: the tables themselves.
- `arithmetic`: multiplies, shifts (as multiplexers), adds, XNORs and popcounts per layer, adder-tree widths, the
  area of one MAC lane and the energy of the operations and of their operand reads, from a replaceable unit-cost
  table (Horowitz, ISSCC 2014); `encoding`: the same layers with their integer weights stored sign-magnitude
  or CSD-encoded.
- `storage`: the weight formats (dense, bitmap, index) both the systolic and the arithmetic model store with.

Each model is a pure function of a model (or one layer) and a typed config; `hardware_section` runs the ones a
recipe names (`measure.hardware`) for the report. docs/hardware.md gives the formulas and their limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.hardware.arithmetic import ArithmeticLayerCost, arithmetic_costs, layer_arithmetic, shared_lane
from slimkit.hardware.config import (
    ArithmeticConfig,
    HardwareConfig,
    LutConfig,
    LutPartition,
    OpCost,
    SystolicConfig,
    UnitCosts,
)
from slimkit.hardware.encoding import EncodedWeightsCost, csd_digits, integer_weights
from slimkit.hardware.lut import LutLayerCost, layer_lut, lut6_count, lut6_depth, lut_costs, lut_totals, neuron_lut
from slimkit.hardware.pricing import lane_area
from slimkit.hardware.storage import StoredWeights, stored_weights
from slimkit.hardware.systolic import SystolicLayerCost, layer_cost, systolic_costs, totals, trace_cost
from slimkit.hardware.trace import LayerTrace, layer_bits, trace_layers
from slimkit.hardware.truth_tables import truth_tables

__all__ = ["ArithmeticConfig", "ArithmeticLayerCost", "EncodedWeightsCost", "HardwareConfig", "LayerTrace",
           "LutConfig", "LutLayerCost", "LutPartition", "OpCost", "StoredWeights", "SystolicConfig",
           "SystolicLayerCost", "UnitCosts", "arithmetic_costs", "csd_digits", "hardware_section", "integer_weights",
           "layer_arithmetic", "layer_bits", "layer_cost", "layer_lut", "lut6_count", "lut6_depth", "lut_costs",
           "lut_totals", "neuron_lut", "stored_weights", "systolic_costs", "totals", "trace_layers", "truth_tables"]


def _densified(traces: list[LayerTrace]) -> list[LayerTrace]:
    """The same layers with every weight non-zero: the dense reference when no dense model is given."""
    return [replace(t, weight=torch.ones_like(t.weight)) for t in traces]


def _systolic(model: nn.Module, inputs: Sequence[Tensor], config: SystolicConfig,
              dense: nn.Module | None) -> dict[str, Any]:
    traces = trace_layers(model, inputs)
    reference = trace_layers(dense, inputs) if dense is not None else _densified(traces)
    variants = {"dense": [trace_cost(t, config) for t in reference],
                "compressed": [trace_cost(t, config) for t in traces]}
    if config.activation_sparsity:
        variants["compressed_rearranged"] = [trace_cost(t, config, rearrange=True) for t in traces]
    return {"config": config.model_dump(mode="json"),
            "reference": "dense model" if dense is not None else "the same layers with dense weights",
            **{k: {"layers": [c.to_dict() for c in costs], "totals": totals(costs, config)}
               for k, costs in variants.items()}}


def _lut(model: nn.Module, inputs: Sequence[Tensor], config: LutConfig) -> dict[str, Any]:
    costs = lut_costs(model, inputs, config)
    return {"config": config.model_dump(mode="json"), "layers": [c.to_dict() for c in costs],
            "totals": lut_totals(costs)}


def _arithmetic(model: nn.Module, inputs: Sequence[Tensor], config: ArithmeticConfig) -> dict[str, Any]:
    costs = arithmetic_costs(model, inputs, config)
    units = config.units
    # the encoded totals keep layers without integer weights (float, binary) at their own form
    encoded = {name: [getattr(c, name) or c for c in costs] for name in ("sign_magnitude", "csd")}
    return {"source": units.source, "config": config.model_dump(mode="json", exclude={"units"}),
            "layers": [c.to_dict() for c in costs],
            "totals": {"energy_pj": sum(c.energy_pj for c in costs),
                       "compute_energy_pj": sum(c.compute_energy_pj for c in costs),
                       "sram_energy_pj": sum(c.movement.sram_energy_pj for c in costs),
                       "dram_energy_pj": sum(c.movement.dram_energy_pj for c in costs),
                       "dense_float_energy_pj": sum(c.dense_float_energy_pj for c in costs),
                       "lane_area_um2": lane_area(shared_lane([c.lane for c in costs]), units),
                       **{f"{name}_energy_pj": sum(c.energy_pj for c in forms) for name, forms in encoded.items()},
                       **{f"{name}_lane_area_um2": lane_area(shared_lane([c.lane for c in forms]), units)
                          for name, forms in encoded.items()}}}


def hardware_section(model: nn.Module, inputs: Sequence[Tensor], config: HardwareConfig,
                     dense: nn.Module | None = None) -> dict[str, Any]:
    """The report's hardware section: each target the config names, costed on `model` (and, for the systolic
    array, on `dense` or on the same layers with dense weights). A target that cannot cost this model keeps
    its error message instead of numbers, so a trained run is never lost to its report."""
    targets = {"systolic": (config.systolic, lambda c: _systolic(model, inputs, c, dense)),
               "lut": (config.lut, lambda c: _lut(model, inputs, c)),
               "arithmetic": (config.arithmetic, lambda c: _arithmetic(model, inputs, c))}
    section: dict[str, Any] = {}
    for key, (target, run) in targets.items():
        if target is None:
            continue
        try:
            section[key] = run(target)
        except SlimkitError as exc:
            section[key] = {"error": str(exc)}
    return section
