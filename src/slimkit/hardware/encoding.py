"""A layer's integer weights stored two other ways, the trade encoding-based MAC designs make: sign-magnitude
narrows the multiplier by the sign bit (a b x b array multiplier has b^2 cells), and canonical signed digits
replace the multiplier by shifts and adds.

Per non-zero weight w at every output position, with b_x the input bits:
  sign-magnitude   1 XOR of the sign bits, 1 unsigned multiply of |w| by |x| at max(m_w, m_x) bits, 1 add or
                   subtract into the accumulator; m_w = bit length of the layer's largest |w| (b_w - 1 unless
                   the code -2^(b_w-1) occurs), m_x = b_x - 1 for signed inputs (held sign-magnitude too), b_x
                   for unsigned ones; one fp32 rescale per output
  CSD-encoded      w in canonical signed digits (non-adjacent form, Reitwiesner 1960: digits in {-1, 0, 1}, no
                   two adjacent non-zero, the fewest non-zero digits of any signed-digit form) has k non-zero
                   digits at positions 0..m_w; x * w is k copies of x, each shifted to its digit's position (a
                   shift over S = m_w + 1 positions: an S:1 multiplexer of b_x bits), combined by k - 1 adds or
                   subtracts of b_x + S bits, plus 1 add into the accumulator; w = 0 costs nothing; one fp32
                   rescale per output (Reitwiesner, "Binary arithmetic", Advances in Computers 1, 1960; Hartley,
                   "Subexpression sharing in filters using canonic signed digit multipliers", IEEE TCAS-II
                   43(10), 1996)

This is not EncodingNet's design (Liu et al., arXiv:2402.18595: trained encoding logic in place of the
multiplier, and fewer pipeline registers); docs/hardware.md says what of it the model leaves out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from slimkit.binary.layers import BinaryConv2d, BinaryLinear
from slimkit.errors import SlimkitError
from slimkit.hardware.config import UnitCosts
from slimkit.hardware.pricing import lane_area, ops_energy, shift_mux_bits, tally
from slimkit.hardware.trace import LayerTrace
from slimkit.layers import parametrization_chain
from slimkit.quant.attach import WeightQuantization, weight_quantization
from slimkit.quant.quantizers import LevelQuantizer, UniformQuantizer


@dataclass
class EncodedWeightsCost:
    """One layer's operations (per sample) with its integer weights stored another way; `lane` the units one
    MAC lane of that form holds. `energy_pj` adds the layer's operand reads (the same bits are stored) to the
    arithmetic's `compute_energy_pj`. `magnitude_bits` is the unsigned multiply's width (sign-magnitude),
    `nonzero_digits` the CSD digits of the layer's weights, each weight counted once (CSD)."""

    ops: dict[str, int]
    compute_energy_pj: float
    energy_pj: float
    lane: dict[str, int] = field(default_factory=dict)
    lane_area_um2: float = 0.0
    magnitude_bits: int | None = None
    nonzero_digits: int | None = None


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


def _input_signed(module: nn.Module) -> bool:
    """Whether a layer's input quantizer produces negative values (a float input counts as signed)."""
    quantizer = getattr(module, "input_quantizer", None)
    if isinstance(quantizer, UniformQuantizer | LevelQuantizer):
        return bool(quantizer.signed)
    return True


def _encoded(ops: dict[str, int], lane: dict[str, int], units: UnitCosts, movement_pj: float,
             **facts: int) -> EncodedWeightsCost:
    compute = ops_energy(ops, units)
    return EncodedWeightsCost(ops=ops, compute_energy_pj=compute, energy_pj=compute + movement_pj, lane=lane,
                              lane_area_um2=lane_area(lane, units), **facts)


def sign_magnitude_cost(trace: LayerTrace, codes: Tensor, accumulator_bits: int, units: UnitCosts,
                        movement_pj: float = 0.0) -> EncodedWeightsCost:
    """Per non-zero weight and position: 1 XOR (the product's sign), 1 unsigned multiply at
    max(m_w, m_x) bits, 1 add or subtract at the accumulator width; one fp32 rescale per output.
    m_w is the bit length of the layer's largest |code|; m_x = b_x - 1 for signed inputs, b_x for unsigned
    ones (see the module docstring)."""
    macs = trace.positions * int((codes != 0).sum())
    outputs = trace.positions * codes.shape[0]
    m_w = max(1, int(codes.abs().max()).bit_length()) if codes.numel() else 1
    m_x = max(1, trace.input_bits - 1) if _input_signed(trace.module) else trace.input_bits
    width = max(m_w, m_x)
    ops = tally(("xor@1", macs), (f"uint_mult@{width}", macs), (f"int_add@{accumulator_bits}", macs),
                ("fp_mult@32", outputs))
    lane = tally(("xor@1", 1), (f"uint_mult@{width}", 1), (f"int_add@{accumulator_bits}", 1), ("fp_mult@32", 1))
    return _encoded(ops, lane, units, movement_pj, magnitude_bits=m_w)


def csd_cost(trace: LayerTrace, codes: Tensor, accumulator_bits: int, units: UnitCosts,
             movement_pj: float = 0.0) -> EncodedWeightsCost:
    """Per position, with k(w) the non-zero CSD digits of each weight (`csd_digits`): sum k shifts over the
    S = m_w + 1 digit positions (each an S:1 multiplexer of the input's bits), sum (k - 1) adds of
    b_x + S bits to combine them and one add per non-zero weight into the accumulator; zero weights cost
    nothing; one fp32 rescale per output."""
    values, counts = torch.unique(codes, return_counts=True)
    per_value = {int(v): csd_digits(int(v)) for v in values.tolist()}
    digits = sum(per_value[int(v)] * int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True))
    kept = int((codes != 0).sum())
    positions = (max(1, int(codes.abs().max()).bit_length()) if codes.numel() else 1) + 1
    combine = trace.input_bits + positions
    mux = shift_mux_bits(trace.input_bits, positions)
    outputs = trace.positions * codes.shape[0]
    ops = tally(("mux2@1", trace.positions * digits * mux), (f"int_add@{combine}", trace.positions * (digits - kept)),
                (f"int_add@{accumulator_bits}", trace.positions * kept), ("fp_mult@32", outputs))
    widest = max(per_value.values(), default=0)
    lane = tally(("mux2@1", widest * mux), (f"int_add@{combine}", max(0, widest - 1)),
                 (f"int_add@{accumulator_bits}", 1), ("fp_mult@32", 1))
    return _encoded(ops, lane, units, movement_pj, nonzero_digits=digits)
