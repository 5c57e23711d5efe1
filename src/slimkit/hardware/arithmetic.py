"""Arithmetic cost per layer: which operations a layer's number formats turn its multiply-accumulates into,
how many, the adder trees they feed, the silicon of one MAC lane, and the energy of the operations and of
reading their operands, from a replaceable table of unit costs.

Per output position and output channel, with F the fan-in (non-zero weights of that output):
  float layer            F fp32 multiplies + F fp32 adds
  uniform b-bit (LSQ)    F int multiplies at max(b_w, b_x) bits + F adds at the accumulator width,
                         then one fp32 multiply to rescale the integer sum
  SP2 / APoT levels      a weight alpha * (2^-a + 2^-b + ...) multiplies by shifting: per non-zero weight
                         t shifts (t = its power-of-two terms), each over the S positions the level set's terms
                         take (an S:1 multiplexer of the input's b_x bits), t - 1 adds of b_x + S bits to
                         combine them and one accumulating add; one fp32 rescale per output (Chang et al.,
                         HPCA 2021; Li et al., ICLR 2020)
  binary x binary        F XNORs and one popcount of F bits (an adder tree of F - 1 adds of at most
                         ceil(log2(F + 1)) bits), then an fp32 scale (Rastegari et al., XNOR-Net, 2016)
  binary weights         F adds or subtracts of the float input (fp32 adds), then an fp32 scale
The accumulator (adder tree) is (b_w + b_x) + ceil(log2 F_max) bits wide, the tree ceil(log2 F_max) deep.
Layers with integer weights are also costed sign-magnitude and CSD-encoded (`encoding.py`).

A MAC lane holds the units one multiply-accumulate of the layer's form uses (for shift-add forms, enough
shifters for its widest weight); its area is their table areas summed.

Operands are read, per sample: every MAC its weight and its input from an on-chip SRAM of `sram_kib` (no reuse
in registers: an upper bound), and DRAM delivers the layer's weights once per `batch` samples (dense, or a bitmap
or index format when smaller, `storage.py`) and its input once. Each read costs its bits / 64 of the table's
64-bit read. Energy is the operations' plus the reads'; the dense fp32 reference reads 32-bit operands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from slimkit.binary.layers import BinaryConv2d, BinaryLinear
from slimkit.errors import SlimkitError
from slimkit.hardware.config import ArithmeticConfig
from slimkit.hardware.encoding import (
    EncodedWeightsCost,
    csd_cost,
    integer_weights,
    quantized_levels,
    sign_magnitude_cost,
)
from slimkit.hardware.lut import fan_ins
from slimkit.hardware.pricing import lane_area, ops_energy, shift_mux_bits, sram_read_pj, tally, unit
from slimkit.hardware.storage import stored_weights
from slimkit.hardware.trace import LayerTrace, trace_layers
from slimkit.quant.attach import weight_quantization
from slimkit.quant.quantizers import LevelQuantizer


def level_terms(levels: torch.Tensor) -> dict[float, int]:
    """Power-of-two terms of each magnitude of a level set: popcount(|v| / v_min), v_min its smallest
    non-zero magnitude, which is a single power of two in SP2 and APoT. A set that is not made of powers of
    two is an error."""
    magnitudes = sorted({abs(float(v)) for v in levels.tolist()})
    smallest = next((v for v in magnitudes if v > 0), None)
    terms = {}
    for v in magnitudes:
        ratio = v / smallest if smallest else 0.0
        if abs(ratio - round(ratio)) > 1e-6 * max(1.0, ratio):
            raise SlimkitError(f"level {v} is not a sum of powers of two of the smallest level {smallest}")
        terms[v] = bin(round(ratio)).count("1")
    return terms


def shift_positions(levels: torch.Tensor) -> int:
    """The positions a level set's power-of-two terms take, in units of its smallest non-zero level: the
    bit positions any |v| / v_min sets (4-bit SP2's 1, 2, 4, 5, 6, 8 set bits 0 to 3: 4 positions)."""
    magnitudes = levels.detach().abs()
    smallest = float(magnitudes[magnitudes > 0].min())
    used = 0
    for v in magnitudes.tolist():
        used |= round(v / smallest)
    return bin(used).count("1")


@dataclass
class Movement:
    """Operand reads of one layer per sample: bits from the SRAM and from DRAM, their energy, and the format
    the weights are stored in."""

    sram_bits: float
    dram_bits: float
    sram_energy_pj: float
    dram_energy_pj: float
    weight_format: str

    @property
    def energy_pj(self) -> float:
        return self.sram_energy_pj + self.dram_energy_pj


def operand_movement(trace: LayerTrace, config: ArithmeticConfig, weight_bits: int, input_bits: int, macs: int,
                     *, compressed: bool = True) -> Movement:
    """The reads of the module docstring: `macs` SRAM reads of (weight_bits + input_bits), DRAM reads of the
    stored weights once per batch and of every input value once. `compressed` off stores weights dense."""
    group = math.prod(trace.weight.shape[1:])  # an index names a position inside one output's fan-in row
    stored = stored_weights(trace.weight, weight_bits, group, compressed=compressed)
    sram_bits = float(macs * (weight_bits + input_bits))
    dram_bits = stored.bits / config.batch + math.prod(trace.input_shape) * input_bits
    units = config.units
    return Movement(sram_bits=sram_bits, dram_bits=dram_bits,
                    sram_energy_pj=sram_bits / 64 * sram_read_pj(units, config.sram_kib),
                    dram_energy_pj=dram_bits / 64 * units.dram_read_pj, weight_format=stored.format)


@dataclass
class ArithmeticLayerCost:
    """Operation counts per sample of one layer, its adder tree, one MAC lane (`lane`, `lane_area_um2`) and
    its energy per sample: `compute_energy_pj` of the operations, `movement` of the operand reads, `energy_pj`
    both. `dense_float_energy_pj` is the same layer as dense fp32 MACs with 32-bit operand reads."""

    name: str
    form: str
    weight_bits: int
    input_bits: int
    outputs: int
    max_fan_in: int
    adder_tree_depth: int
    accumulator_bits: int
    ops: dict[str, int]
    lane: dict[str, int]
    lane_area_um2: float
    compute_energy_pj: float
    movement: Movement
    energy_pj: float
    dense_float_energy_pj: float
    sign_magnitude: EncodedWeightsCost | None = None
    csd: EncodedWeightsCost | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _form(module: nn.Module, input_bits: int) -> str:
    if isinstance(module, BinaryConv2d | BinaryLinear):
        return "xnor-popcount" if input_bits == 1 else "binary-weights"
    wq = weight_quantization(module)
    if wq is None:
        return "float"
    return "shift-add" if isinstance(wq.quantizer, LevelQuantizer) else "integer"


def _shift_add(trace: LayerTrace, accumulator_bits: int, outputs: int) -> tuple[dict[str, int], dict[str, int]]:
    """Operations and lane of a level-set layer (module docstring)."""
    quantization = weight_quantization(trace.module)
    if quantization is None or not isinstance(quantization.quantizer, LevelQuantizer):
        raise SlimkitError(f"layer {trace.name!r}: shift-add weights need a level-set quantizer (SP2, APoT)")
    level_set = quantization.quantizer.levels
    terms_of = level_terms(level_set)
    levels = quantized_levels(trace.module)
    per_weight = torch.tensor([terms_of[abs(v)] for v in levels.flatten().tolist()], dtype=torch.long)
    terms = trace.positions * int(per_weight.sum())
    kept = trace.positions * int((per_weight > 0).sum())
    positions = shift_positions(level_set)
    mux, combine = shift_mux_bits(trace.input_bits, positions), trace.input_bits + positions
    widest = int(per_weight.max()) if per_weight.numel() else 0
    ops = tally(("mux2@1", terms * mux), (f"int_add@{combine}", terms - kept), (f"int_add@{accumulator_bits}", kept),
                ("fp_mult@32", outputs))
    lane = tally(("mux2@1", widest * mux), (f"int_add@{combine}", max(0, widest - 1)),
                 (f"int_add@{accumulator_bits}", 1), ("fp_mult@32", 1))
    return ops, lane


def layer_arithmetic(trace: LayerTrace, config: ArithmeticConfig) -> ArithmeticLayerCost:
    """Counts, lane and energy of one traced layer (formulas in the module docstring)."""
    units = config.units
    fans = fan_ins(trace.weight)
    outputs = trace.positions * trace.weight.shape[0]
    macs = trace.positions * sum(fans)
    f_max = max(fans) if fans else 0
    depth = math.ceil(math.log2(f_max)) if f_max > 1 else 0
    wb, xb = trace.weight_bits, trace.input_bits
    form = _form(trace.module, xb)
    if form == "float":
        acc = 32
        ops = tally(("fp_mult@32", macs), ("fp_add@32", macs))
        lane = tally(("fp_mult@32", 1), ("fp_add@32", 1))
    elif form == "integer":
        acc = wb + xb + depth
        ops = tally((f"int_mult@{max(wb, xb)}", macs), (f"int_add@{acc}", macs), ("fp_mult@32", outputs))
        lane = tally((f"int_mult@{max(wb, xb)}", 1), (f"int_add@{acc}", 1), ("fp_mult@32", 1))
    elif form == "shift-add":
        acc = wb + xb + depth
        ops, lane = _shift_add(trace, acc, outputs)
    elif form == "xnor-popcount":
        acc = max(1, math.ceil(math.log2(f_max + 1)))
        ops = tally(("xnor@1", macs), (f"int_add@{acc}", macs - outputs), ("fp_mult@32", outputs),
                    ("popcount", outputs))
        lane = tally(("xnor@1", 1), (f"int_add@{acc}", 1), ("fp_mult@32", 1))
    else:  # binary weights, float inputs: +x or -x into a float sum
        acc = 32
        ops = tally(("fp_add@32", macs), ("fp_mult@32", outputs))
        lane = tally(("fp_add@32", 1), ("fp_mult@32", 1))
    movement = operand_movement(trace, config, wb, xb, macs)
    dense = operand_movement(trace, config, 32, 32, trace.macs, compressed=False)
    dense_compute = trace.macs * (unit(units, "fp_mult", 32).energy_pj + unit(units, "fp_add", 32).energy_pj)
    compute = ops_energy(ops, units)
    cost = ArithmeticLayerCost(
        name=trace.name, form=form, weight_bits=wb, input_bits=xb, outputs=outputs, max_fan_in=f_max,
        adder_tree_depth=depth, accumulator_bits=acc, ops=ops, lane=lane, lane_area_um2=lane_area(lane, units),
        compute_energy_pj=compute, movement=movement, energy_pj=compute + movement.energy_pj,
        dense_float_energy_pj=dense_compute + dense.energy_pj)
    if form in ("integer", "shift-add"):
        codes = integer_weights(trace)
        if codes is None:
            raise SlimkitError(f"layer {trace.name!r}: an {form} layer without a weight quantizer")
        cost.sign_magnitude = sign_magnitude_cost(trace, codes, acc, units, movement.energy_pj)
        cost.csd = csd_cost(trace, codes, acc, units, movement.energy_pj)
    return cost


def arithmetic_costs(model: nn.Module, inputs: Sequence[torch.Tensor], config: ArithmeticConfig
                     ) -> list[ArithmeticLayerCost]:
    """Every conv and linear layer of `model`, in call order."""
    return [layer_arithmetic(trace, config) for trace in trace_layers(model, inputs)]


def shared_lane(lanes: Sequence[dict[str, int]]) -> dict[str, int]:
    """One lane that runs every layer: each unit (op at a width) as many times as the layer needing most has it."""
    shared: dict[str, int] = {}
    for lane in lanes:
        for key, count in lane.items():
            shared[key] = max(shared.get(key, 0), count)
    return shared
