"""Arithmetic cost per layer: which operations a layer's number formats turn its multiply-accumulates into,
how many, the adder trees they feed, and their energy from a replaceable table of unit costs.

Per output position and output channel, with F the fan-in (non-zero weights of that output):
  float layer            F fp32 multiplies + F fp32 adds
  uniform b-bit (LSQ)    F int multiplies at max(b_w, b_x) bits + F adds at the accumulator width,
                         then one fp32 multiply to rescale the integer sum
  SP2 / APoT levels      a weight alpha * (2^-a + 2^-b + ...) multiplies by shifting: per non-zero weight
                         t shifts and t - 1 adds (t = its power-of-two terms), plus one accumulating add;
                         one fp32 rescale per output (Chang et al., HPCA 2021; Li et al., ICLR 2020)
  binary x binary        F XNORs and one popcount of F bits (an adder tree of F - 1 adds of at most
                         ceil(log2(F + 1)) bits), then an fp32 scale (Rastegari et al., XNOR-Net, 2016)
  binary weights         F adds or subtracts of the float input (fp32 adds), then an fp32 scale
The accumulator (adder tree) is (b_w + b_x) + ceil(log2 F_max) bits wide, the tree ceil(log2 F_max) deep.

Energy is counts x the table's per-op energy (`UnitCosts`, default Horowitz ISSCC 2014, 45 nm); an op of
width b takes the entry of the smallest listed width >= b. Multiplications and additions only: data
movement is the systolic model's business.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.binary.layers import BinaryConv2d, BinaryLinear
from slimkit.errors import SlimkitError
from slimkit.hardware.config import ArithmeticConfig, OpCost, UnitCosts
from slimkit.hardware.lut import fan_ins
from slimkit.hardware.trace import LayerTrace, trace_layers
from slimkit.quant.attach import WeightQuantization, weight_quantization
from slimkit.quant.quantizers import LevelQuantizer


def unit(units: UnitCosts, op: str, bits: int) -> OpCost:
    """The cost of one `op` (int_add, int_mult, fp_add, fp_mult, shift) at `bits`: the smallest listed width
    that holds it."""
    table: dict[int, OpCost] = getattr(units, op)
    fitting = [w for w in table if w >= bits]
    if not fitting:
        raise SlimkitError(f"the unit-cost table lists {op} up to {max(table)} bits, and this layer needs "
                           f"{bits}; add a wider entry to measure.hardware.arithmetic.units.{op}")
    return table[min(fitting)]


def level_terms(levels: Tensor) -> dict[float, int]:
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


def quantized_levels(module: nn.Module) -> Tensor:
    """The level (in units of the clip, signed) each weight of a level-set-quantized layer sits on, computed
    as its quantizer does it, in the canonical (out, in, ...) layout."""
    plist = module.parametrizations.weight
    x = plist.original
    for p in plist:
        if isinstance(p, WeightQuantization):
            quantizer = p.quantizer
            x = x.t() if p.transposed else x
            break
        x = p(x)
    else:
        raise SlimkitError("no weight quantizer in this layer's parametrizations")
    x = x.detach()
    if quantizer.standardize:
        x = x / (x.std() + 1e-12)
    low = -1.0 if quantizer.signed else 0.0
    return quantizer.project(torch.clamp(x / quantizer.alpha.detach(), low, 1.0))


@dataclass
class ArithmeticLayerCost:
    """Operation counts per sample of one layer, its adder tree and its energy (pJ per sample)."""

    name: str
    form: str
    weight_bits: int
    input_bits: int
    outputs: int
    max_fan_in: int
    adder_tree_depth: int
    accumulator_bits: int
    ops: dict[str, int] = field(default_factory=dict)
    energy_pj: float = 0.0
    dense_float_energy_pj: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _form(module: nn.Module, weight_bits: int, input_bits: int) -> str:
    if isinstance(module, BinaryConv2d | BinaryLinear):
        return "xnor-popcount" if input_bits == 1 else "binary-weights"
    wq = weight_quantization(module)
    if wq is None:
        return "float"
    return "shift-add" if isinstance(wq.quantizer, LevelQuantizer) else "integer"


def layer_arithmetic(trace: LayerTrace, config: ArithmeticConfig) -> ArithmeticLayerCost:
    """Counts and energy of one traced layer (formulas in the module docstring)."""
    units = config.units
    module, name = trace.module, trace.name
    weight = trace.weight
    fans = fan_ins(weight)
    outputs = trace.positions * weight.shape[0]
    nonzero_macs = trace.positions * sum(fans)
    f_max = max(fans) if fans else 0
    depth = math.ceil(math.log2(f_max)) if f_max > 1 else 0
    wb, xb = trace.weight_bits, trace.input_bits
    form = _form(module, wb, xb)
    if form == "float":
        acc = 32
        ops = {"fp_mult@32": nonzero_macs, "fp_add@32": nonzero_macs}
    elif form == "integer":
        acc = wb + xb + depth
        ops = {f"int_mult@{max(wb, xb)}": nonzero_macs, f"int_add@{acc}": nonzero_macs, "fp_mult@32": outputs}
    elif form == "shift-add":
        acc = wb + xb + depth
        levels = quantized_levels(module)
        terms_of = level_terms(weight_quantization(module).quantizer.levels)
        per_weight = torch.tensor([terms_of[abs(v)] for v in levels.flatten().tolist()],
                                  dtype=torch.long).reshape(levels.shape)
        terms = trace.positions * int(per_weight.sum())
        kept = trace.positions * int((per_weight > 0).sum())
        # a weight of t terms: t shifted copies of x, t - 1 adds to combine them, 1 add into the accumulator
        ops = {f"shift@{acc}": terms, f"int_add@{acc}": (terms - kept) + kept, "fp_mult@32": outputs}
    elif form == "xnor-popcount":
        acc = max(1, math.ceil(math.log2(f_max + 1)))
        ops = {"xnor@1": nonzero_macs, f"int_add@{acc}": nonzero_macs - outputs, "fp_mult@32": outputs,
               "popcount": outputs}
    else:  # binary weights, float inputs: +x or -x into a float sum
        acc = 32
        ops = {"fp_add@32": nonzero_macs, "fp_mult@32": outputs}
    energy = 0.0
    for key, count in ops.items():
        op, _, bits = key.partition("@")
        if op == "popcount":
            continue  # counted as its adds (int_add) and XNOR bits above
        cost = units.xnor if op == "xnor" else unit(units, op, int(bits))
        energy += count * cost.energy_pj
    dense = trace.macs * (unit(units, "fp_mult", 32).energy_pj + unit(units, "fp_add", 32).energy_pj)
    return ArithmeticLayerCost(name=name, form=form, weight_bits=wb, input_bits=xb, outputs=outputs,
                               max_fan_in=f_max, adder_tree_depth=depth, accumulator_bits=acc, ops=ops,
                               energy_pj=energy, dense_float_energy_pj=dense)


def arithmetic_costs(model: nn.Module, inputs: Sequence[Tensor], config: ArithmeticConfig
                     ) -> list[ArithmeticLayerCost]:
    """Every conv and linear layer of `model`, in call order."""
    return [layer_arithmetic(trace, config) for trace in trace_layers(model, inputs)]
