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

A layer with integer weights (uniform codes round(w / step), or SP2/APoT levels in units of the smallest
level) is also costed with those weights stored two other ways, because both are what encoding-based MAC
designs trade: sign-magnitude narrows the multiplier by the sign bit (a b x b array multiplier has b^2 cells),
and an encoding with few non-zero digits replaces the multiplier by shifts and adds. Per non-zero weight w
at every position:
  sign-magnitude         1 XOR of the sign bits, 1 unsigned multiply of |w| by |x| at max(m_w, m_x) bits,
                         1 add or subtract into the accumulator; m_w = bit length of the layer's largest |w|
                         (b_w - 1 unless the code -2^(b_w-1) occurs), m_x = b_x - 1 for signed inputs (held
                         sign-magnitude too), b_x for unsigned ones; one fp32 rescale per output
  CSD-encoded            w in canonical signed digits (non-adjacent form, Reitwiesner 1960: digits in
                         {-1, 0, 1}, no two adjacent non-zero, the fewest non-zero digits of any signed-digit
                         form) has k non-zero digits; x * w is k shifted copies of x combined by k - 1 adds or
                         subtracts, plus 1 add into the accumulator: k shifts and k adds; w = 0 costs nothing;
                         one fp32 rescale per output (Reitwiesner, "Binary arithmetic", Advances in Computers
                         1, 1960; Hartley, "Subexpression sharing in filters using canonic signed digit
                         multipliers", IEEE TCAS-II 43(10), 1996)

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
from slimkit.layers import parametrization_chain
from slimkit.quant.attach import WeightQuantization, weight_quantization
from slimkit.quant.quantizers import LevelQuantizer, UniformQuantizer


def unit(units: UnitCosts, op: str, bits: int) -> OpCost:
    """The cost of one `op` (int_add, int_mult, uint_mult, fp_add, fp_mult, shift) at `bits`: the smallest listed width
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
    chain = parametrization_chain(module)
    if chain is None:
        raise SlimkitError(f"{type(module).__name__} has no parametrized (quantized) weight")
    x, quantizer = chain.original, None
    for p in chain:
        if isinstance(p, WeightQuantization):
            quantizer = p.quantizer
            x = x.t() if p.transposed else x
            break
        x = p(x)
    if not isinstance(quantizer, LevelQuantizer):
        raise SlimkitError(f"no level-set weight quantizer (SP2, APoT) in this layer's parametrizations, found "
                           f"{type(quantizer).__name__}")
    x = x.detach()
    if quantizer.standardize:
        x = x / (x.std() + 1e-12)
    low = -1.0 if quantizer.signed else 0.0
    return quantizer.project(torch.clamp(x / quantizer.alpha.detach(), low, 1.0))


def csd_digits(n: int) -> int:
    """Non-zero digits of n's canonical signed-digit (non-adjacent) form: the adds a constant multiplier by n
    needs, plus one (7 = 8 - 1: 2 digits, where binary 111 has 3). The sign of n is a subtract, not a digit.

    Reitwiesner's recoding: while n > 0, an odd n takes the digit d = 2 - (n mod 4) (+1 or -1), which makes
    n - d divisible by 4, so the next digit is 0 (no two adjacent non-zero digits)."""
    n, count = abs(int(n)), 0
    while n:
        if n & 1:
            n -= 2 - (n & 3)
            count += 1
        n >>= 1
    return count


def integer_weights(trace: LayerTrace) -> Tensor | None:
    """The integer each weight of a quantized layer multiplies by, canonical (out, in, ...): the code
    round(w / step) of a uniform quantizer (per-channel steps along dim 0), or the level in units of the
    smallest non-zero level of a level set (SP2, APoT). None for float and binarized layers; a quantizer of
    another type, or a weight off its quantizer's grid, is an error naming the layer."""
    module = trace.module
    quantization = weight_quantization(module)
    if quantization is None or isinstance(module, BinaryConv2d | BinaryLinear):
        return None
    quantizer = quantization.quantizer
    if isinstance(quantizer, UniformQuantizer):
        step = quantizer.step.detach().float()
        step = step.reshape(-1, *[1] * (trace.weight.ndim - 1)) if quantizer.channels > 1 else step.reshape(())
        codes = trace.weight / step
    elif isinstance(quantizer, LevelQuantizer):
        magnitudes = quantizer.levels.detach().abs()
        smallest = magnitudes[magnitudes > 0].min()
        codes = quantized_levels(module) / smallest * (trace.weight != 0)  # a mask after the quantizer zeroes
    else:
        raise SlimkitError(f"layer {trace.name!r}: cannot read integer weights from a {type(quantizer).__name__}; "
                           f"the arithmetic model knows UniformQuantizer and LevelQuantizer")
    rounded = torch.round(codes)
    off = (codes - rounded).abs()
    if off.numel() and float(off.max()) > 1e-3:
        raise SlimkitError(f"layer {trace.name!r}: weight {float(codes.flatten()[off.argmax()])} steps is not an "
                           f"integer number of its quantizer's steps")
    return rounded.long()


@dataclass
class EncodedWeightsCost:
    """One layer's operations (per sample) with its integer weights stored another way: `magnitude_bits` is
    the unsigned multiply's width (sign-magnitude), `nonzero_digits` the CSD digits of the layer's weights,
    each weight counted once (CSD)."""

    ops: dict[str, int]
    energy_pj: float
    magnitude_bits: int | None = None
    nonzero_digits: int | None = None


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
    sign_magnitude: EncodedWeightsCost | None = None
    csd: EncodedWeightsCost | None = None

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
        quantization = weight_quantization(module)
        if quantization is None or not isinstance(quantization.quantizer, LevelQuantizer):
            raise SlimkitError(f"layer {name!r}: shift-add weights need a level-set quantizer (SP2, APoT)")
        terms_of = level_terms(quantization.quantizer.levels)
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
    dense = trace.macs * (unit(units, "fp_mult", 32).energy_pj + unit(units, "fp_add", 32).energy_pj)
    cost = ArithmeticLayerCost(name=name, form=form, weight_bits=wb, input_bits=xb, outputs=outputs,
                               max_fan_in=f_max, adder_tree_depth=depth, accumulator_bits=acc, ops=ops,
                               energy_pj=ops_energy(ops, units), dense_float_energy_pj=dense)
    if form in ("integer", "shift-add"):
        codes = integer_weights(trace)
        if codes is None:
            raise SlimkitError(f"layer {name!r}: an {form} layer without a weight quantizer")
        cost.sign_magnitude = sign_magnitude_cost(trace, codes, acc, units)
        cost.csd = csd_cost(trace, codes, acc, units)
    return cost


def ops_energy(ops: dict[str, int], units: UnitCosts) -> float:
    """Sum of count x unit energy over `ops` ("op@bits": count); a popcount is priced as its adds and XNORs,
    which `ops` lists separately."""
    energy = 0.0
    for key, count in ops.items():
        op, _, bits = key.partition("@")
        if op == "popcount":
            continue
        cost = units.xnor if op == "xnor" else units.xor if op == "xor" else unit(units, op, int(bits))
        energy += count * cost.energy_pj
    return energy


def _input_signed(module: nn.Module) -> bool:
    """Whether a layer's input quantizer produces negative values (a float input counts as signed)."""
    quantizer = getattr(module, "input_quantizer", None)
    if isinstance(quantizer, UniformQuantizer | LevelQuantizer):
        return bool(quantizer.signed)
    return True


def sign_magnitude_cost(trace: LayerTrace, codes: Tensor, accumulator_bits: int,
                        units: UnitCosts) -> EncodedWeightsCost:
    """Per non-zero weight and position: 1 XOR (the product's sign), 1 unsigned multiply at
    max(m_w, m_x) bits, 1 add or subtract at the accumulator width; one fp32 rescale per output.
    m_w is the bit length of the layer's largest |code|; m_x = b_x - 1 for signed inputs, b_x for unsigned
    ones (see the module docstring)."""
    macs = trace.positions * int((codes != 0).sum())
    outputs = trace.positions * codes.shape[0]
    m_w = max(1, int(codes.abs().max()).bit_length()) if codes.numel() else 1
    m_x = max(1, trace.input_bits - 1) if _input_signed(trace.module) else trace.input_bits
    width = max(m_w, m_x)
    ops = {"xor@1": macs, f"uint_mult@{width}": macs, f"int_add@{accumulator_bits}": macs, "fp_mult@32": outputs}
    return EncodedWeightsCost(ops=ops, energy_pj=ops_energy(ops, units), magnitude_bits=m_w)


def csd_cost(trace: LayerTrace, codes: Tensor, accumulator_bits: int, units: UnitCosts) -> EncodedWeightsCost:
    """Per position, with k(w) the non-zero CSD digits of each weight (`csd_digits`): sum k shifts and
    sum k adds (k - 1 to combine the shifted copies, 1 to accumulate); zero weights cost nothing; one fp32
    rescale per output."""
    values, counts = torch.unique(codes, return_counts=True)
    digits = sum(csd_digits(int(v)) * int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True))
    outputs = trace.positions * codes.shape[0]
    ops = {f"shift@{accumulator_bits}": trace.positions * digits,
           f"int_add@{accumulator_bits}": trace.positions * digits, "fp_mult@32": outputs}
    return EncodedWeightsCost(ops=ops, energy_pj=ops_energy(ops, units), nonzero_digits=digits)


def arithmetic_costs(model: nn.Module, inputs: Sequence[Tensor], config: ArithmeticConfig
                     ) -> list[ArithmeticLayerCost]:
    """Every conv and linear layer of `model`, in call order."""
    return [layer_arithmetic(trace, config) for trace in trace_layers(model, inputs)]
