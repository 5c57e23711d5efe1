"""Arithmetic counts, MAC-lane area and energy (operations and operand reads) against hand-computed layers."""

import pytest
import torch
from torch import nn

from slimkit.binary.binarizers import XnorWeight
from slimkit.binary.layers import binarize_module
from slimkit.errors import SlimkitError
from slimkit.hardware import ArithmeticConfig, UnitCosts, arithmetic_costs, csd_digits, integer_weights, trace_layers
from slimkit.hardware.arithmetic import level_terms, shift_positions, unit
from slimkit.hardware.pricing import ops_energy, shift_mux_bits
from slimkit.quant.attach import quantize_layer
from slimkit.quant.levels import apot_levels, sp2_levels
from slimkit.quant.quantizers import LevelQuantizer, UniformQuantizer

MUX2_PJ = 0.03 / 8 * 1.862 / 4.256  # one bit of a 2:1 multiplexer: 0.44 of an 8-bit add's bit slice
MUX2_UM2 = 36 / 8 * 1.862 / 4.256


def _cost(model: nn.Module, x: torch.Tensor, config: ArithmeticConfig | None = None):
    return arithmetic_costs(model, [x], config or ArithmeticConfig())[0]


def test_sp2_levels_split_into_power_of_two_terms():
    # 4-bit SP2: {0, 1/8, 1/4, 1/2, 5/8 = 1/2 + 1/8, 3/4 = 1/2 + 1/4, 1}
    assert level_terms(sp2_levels(4)) == {0.0: 0, 0.125: 1, 0.25: 1, 0.5: 1, 0.625: 2, 0.75: 2, 1.0: 1}
    # APoT(4) before scaling: one of {0, 1/2, 1/8, 1/32} plus one of {0, 1/4, 1/16, 1/64}; the largest level,
    # 1/2 + 1/4, has two terms, and 1/32 + 1/64 (the smallest sum of two) too
    terms = level_terms(apot_levels(4))
    assert terms[1.0] == 2 and max(terms.values()) == 2 and list(terms.values()).count(1) == 6


def test_shift_add_layer_counts_and_energy():
    layer = nn.Linear(4, 2, bias=False)
    quantize_layer(layer, LevelQuantizer(sp2_levels(4), True, 1.0, standardize=False), UniformQuantizer(4), 4, 4)
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.tensor([[1.0, -0.75, 0, 0.125], [0.625, 0, 0, 0.5]]))
    cost = _cost(nn.Sequential(layer), torch.rand(3, 4))
    # levels over 1/8: 8, -6, 0, 1 and 5, 0, 0, 4. Terms: row 0: 1 + 2 + 0 + 1 = 4, row 1: 2 + 0 + 0 + 1 = 3.
    # 4-bit SP2's terms sit at 4 positions (1, 2, 4, 8 times 1/8): each of the 7 shifts is a 4:1 multiplexer of
    # the 4-bit input, 4 x 3 = 12 mux2 bits; 7 - 5 = 2 adds of 4 + 4 = 8 bits combine the terms of the
    # two-term weights; 5 adds accumulate; one fp32 rescale per output (2 outputs).
    # fan-ins 3 and 2: tree depth ceil(log2 3) = 2, accumulator 4 + 4 + 2 = 10 bits -> the 16-bit entries.
    assert cost.form == "shift-add" and shift_positions(sp2_levels(4)) == 4
    assert cost.ops == {"mux2@1": 84, "int_add@8": 2, "int_add@10": 5, "fp_mult@32": 2}
    assert (cost.max_fan_in, cost.adder_tree_depth, cost.accumulator_bits) == (3, 2, 10)
    assert cost.compute_energy_pj == pytest.approx(84 * MUX2_PJ + 2 * 0.03 + 5 * 0.05 + 2 * 3.7)
    # one lane: two shifters for a two-term weight, one combining add, one accumulating add, one rescale
    assert cost.lane == {"mux2@1": 24, "int_add@8": 1, "int_add@10": 1, "fp_mult@32": 1}
    assert cost.lane_area_um2 == pytest.approx(24 * MUX2_UM2 + 36 + 67 + 7700)


def test_integer_layer_counts_and_a_replaced_table():
    layer = nn.Linear(3, 1, bias=False)
    weight_q = UniformQuantizer(8, 1, signed=True)
    weight_q.calibrate(torch.ones(1, 3))
    quantize_layer(layer, weight_q, UniformQuantizer(8), 8, 8)
    with torch.no_grad():
        layer.parametrizations.weight.original.fill_(0.5)
    # 3 int8 multiplies, 3 adds at 8 + 8 + ceil(log2 3) = 18 bits (32-bit entry), one fp32 rescale:
    # 3 x 0.2 + 3 x 0.1 + 3.7 = 4.6 pJ
    cost = _cost(nn.Sequential(layer), torch.rand(2, 3))
    assert cost.ops == {"int_mult@8": 3, "int_add@18": 3, "fp_mult@32": 1}
    assert cost.compute_energy_pj == pytest.approx(4.6)
    assert cost.lane_area_um2 == pytest.approx(282 + 137 + 7700)  # an 8-bit multiplier, a 32-bit adder, a rescaler
    cheap = UnitCosts(int_mult={8: {"energy_pj": 0.1, "area_um2": 1}}, source="my process")
    assert _cost(nn.Sequential(layer), torch.rand(2, 3), ArithmeticConfig(units=cheap)).compute_energy_pj == \
        pytest.approx(3 * 0.1 + 3 * 0.1 + 3.7)


def test_binary_layer_counts_xnor_and_popcount():
    from slimkit.binary.binarizers import ActivationBinarizer
    from slimkit.binary.functions import ClippedSTE

    layer = binarize_module(nn.Linear(5, 3), lambda w: XnorWeight(), ActivationBinarizer(ClippedSTE(1.0)))
    cost = _cost(nn.Sequential(layer), torch.randn(2, 5))
    # 3 outputs x 5 inputs: 15 XNORs, each output's popcount of 5 bits is a tree of 4 adds of
    # ceil(log2 6) = 3 bits (12 in all, at the 8-bit entry), then an fp32 scale per output.
    assert cost.form == "xnor-popcount"
    assert cost.ops == {"xnor@1": 15, "int_add@3": 12, "fp_mult@32": 3, "popcount": 3}
    assert cost.compute_energy_pj == pytest.approx(15 * 0.03 / 8 + 12 * 0.03 + 3 * 3.7)


def test_float_conv_counts_every_nonzero_mac():
    conv = nn.Conv2d(2, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.weight[0, 1, 0, 0] = 2.0
    cost = _cost(nn.Sequential(conv), torch.randn(1, 2, 4, 4))
    # 16 output positions x 2 non-zero weights = 32 fp32 multiply-adds; dense would be 16 x 18 = 288
    assert cost.ops == {"fp_mult@32": 32, "fp_add@32": 32}
    assert cost.compute_energy_pj == pytest.approx(32 * 4.6)
    # dense fp32: 288 MACs at 4.6 pJ; each reads 64 bits from the 32 KiB SRAM (20 pJ per 64 bits); DRAM reads
    # the 18 weights and the 2 x 16 inputs once at 32 bits, 1600 bits at 1280 pJ per 64
    assert cost.dense_float_energy_pj == pytest.approx(288 * 4.6 + 288 * 20 + 1600 / 64 * 1280)


def test_unit_lookup_takes_the_next_wider_entry_and_refuses_wider_than_the_table():
    units = UnitCosts()
    assert unit(units, "int_add", 12).energy_pj == 0.05
    assert unit(units, "int_mult", 9).energy_pj == 3.1
    with pytest.raises(SlimkitError, match="lists int_add up to 32 bits, and this layer needs 40"):
        unit(units, "int_add", 40)


def test_csd_digits_by_hand():
    # 0: no digit. 1 = 1. 7 = 8 - 1 (binary 111 has 3). 3 = 4 - 1. 5 = 4 + 1 (101 has no adjacent ones).
    # 15 = 16 - 1. 11 = 1011 -> 16 - 4 - 1 (3 digits, as its binary). 23 = 10111 -> 32 - 8 - 1 (3, binary 4).
    # The sign is a subtract: -7 has 7's digits.
    assert [csd_digits(n) for n in (0, 1, 7, 3, 5, 15, 11, 23, -7, -3)] == [0, 1, 2, 2, 2, 2, 3, 3, 2, 2]


def _integer_layer(codes: list[list[int]], bits: int, signed_inputs: bool) -> nn.Linear:
    """A linear layer whose weights are exactly `codes` times a per-channel step of 0.5."""
    out_features, in_features = len(codes), len(codes[0])
    layer = nn.Linear(in_features, out_features, bias=False)
    weight_q = UniformQuantizer(bits, out_features, signed=True)
    inputs = UniformQuantizer(bits, signed=signed_inputs)
    with torch.no_grad():
        weight_q.step.fill_(0.5)
        inputs.step.fill_(0.25)
    weight_q.initialized.fill_(True)
    inputs.initialized.fill_(True)
    quantize_layer(layer, weight_q, inputs, bits, bits)
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.tensor(codes, dtype=torch.float32) * 0.5)
    return layer


def test_sign_magnitude_and_csd_costs_of_integer_weights():
    layer = _integer_layer([[7, 0, -3, 1], [0, 2, 0, -5]], bits=4, signed_inputs=True)
    assert integer_weights(trace_layers(nn.Sequential(layer), [torch.rand(3, 4)])[0]).tolist() == \
        [[7, 0, -3, 1], [0, 2, 0, -5]]
    cost = _cost(nn.Sequential(layer), torch.rand(3, 4))
    # 5 non-zero weights, 2 outputs, fan-ins 3 and 2: tree depth 2, accumulator 4 + 4 + 2 = 10 bits (16-bit add
    # entry, 0.05 pJ). As stored: 5 int4 multiplies (0.2 x (4/8)^2 = 0.05 pJ) + 5 adds + 2 fp32 rescales.
    assert cost.ops == {"int_mult@4": 5, "int_add@10": 5, "fp_mult@32": 2}
    assert cost.compute_energy_pj == pytest.approx(5 * 0.05 + 5 * 0.05 + 2 * 3.7)
    # sign-magnitude: the largest |w| is 7, 3 magnitude bits; the inputs are signed 4-bit, 3 magnitude bits:
    # 5 XORs (0.03 / 8 pJ), 5 unsigned 3-bit multiplies (0.2 x (3/8)^2 = 0.028125 pJ), 5 adds, 2 rescales
    sm = cost.sign_magnitude
    assert sm.magnitude_bits == 3
    assert sm.ops == {"xor@1": 5, "uint_mult@3": 5, "int_add@10": 5, "fp_mult@32": 2}
    assert sm.compute_energy_pj == pytest.approx(5 * 0.00375 + 5 * 0.028125 + 5 * 0.05 + 2 * 3.7)
    # the same weights and inputs are read either way
    assert sm.energy_pj - sm.compute_energy_pj == pytest.approx(cost.energy_pj - cost.compute_energy_pj)
    # CSD: 7 = 8 - 1 (2 digits), 0 (none), -3 = -4 + 1 (2), 1 (1), 2 (1), -5 = -4 - 1 (2): 8 digits. Digits
    # sit at positions 0..3 (7 needs 3 magnitude bits, its form 4 positions): each digit's shift is a 4:1
    # multiplexer of the 4-bit input, 12 mux2 bits (96 in all); 8 - 5 = 3 adds of 4 + 4 = 8 bits combine the
    # digits, 5 adds of 10 bits accumulate, and 2 rescales
    assert cost.csd.nonzero_digits == 8
    assert cost.csd.ops == {"mux2@1": 96, "int_add@8": 3, "int_add@10": 5, "fp_mult@32": 2}
    assert cost.csd.compute_energy_pj == pytest.approx(96 * MUX2_PJ + 3 * 0.03 + 5 * 0.05 + 2 * 3.7)


def test_sign_magnitude_widths_follow_the_codes_and_the_input_sign():
    # unsigned 4-bit inputs are their own 4-bit magnitude, so the multiply stays 4 bits wide
    unsigned = _cost(nn.Sequential(_integer_layer([[7, -1]], 4, signed_inputs=False)), torch.rand(2, 2))
    assert unsigned.sign_magnitude.magnitude_bits == 3 and "uint_mult@4" in unsigned.sign_magnitude.ops
    # the code -8 (= -2^(4-1)) has magnitude 8, which needs all 4 bits
    widest = _cost(nn.Sequential(_integer_layer([[-8, 1]], 4, signed_inputs=True)), torch.rand(2, 2))
    assert widest.sign_magnitude.magnitude_bits == 4 and widest.sign_magnitude.ops["uint_mult@4"] == 2
    assert widest.csd.nonzero_digits == 2  # -8 is one digit, 1 is one


def test_encoded_costs_of_a_conv_scale_with_positions():
    conv = nn.Conv2d(1, 1, 2, bias=False)
    weight_q = UniformQuantizer(4, 1, signed=True)
    inputs = UniformQuantizer(4, signed=False)
    for q in (weight_q, inputs):
        q.initialized.fill_(True)
    quantize_layer(conv, weight_q, inputs, 4, 4)
    with torch.no_grad():
        conv.parametrizations.weight.original.copy_(torch.tensor([[[[7.0, 0], [0, 3]]]]))  # step 1
    cost = _cost(nn.Sequential(conv), torch.rand(1, 1, 4, 4))
    # 3 x 3 = 9 output positions; 7 and 3 have 2 CSD digits each: 9 x 4 = 36 shifts (4 positions, 12 mux2 bits
    # each), 9 x 2 adds of 8 bits to combine and 9 x 2 adds into 4 + 4 + ceil(log2 2) = 9 accumulator bits
    assert cost.csd.nonzero_digits == 4
    assert cost.csd.ops == {"mux2@1": 36 * 12, "int_add@8": 18, "int_add@9": 18, "fp_mult@32": 9}
    assert cost.sign_magnitude.ops["xor@1"] == 18  # 9 positions x 2 non-zero weights


def test_shift_add_levels_in_units_of_the_smallest_level():
    layer = nn.Linear(4, 2, bias=False)
    quantize_layer(layer, LevelQuantizer(sp2_levels(4), True, 1.0, standardize=False), UniformQuantizer(4), 4, 4)
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(torch.tensor([[1.0, -0.75, 0, 0.125], [0.625, 0, 0, 0.5]]))
    trace = trace_layers(nn.Sequential(layer), [torch.rand(3, 4)])[0]
    # levels over 1/8: 8, -6, 0, 1 and 5, 0, 0, 4; CSD digits 1 + 2 + 0 + 1 + 2 + 0 + 0 + 1 = 7 (6 = 8 - 2,
    # 5 = 4 + 1), the same as the SP2 terms here; the largest magnitude, 8, needs 4 bits
    assert integer_weights(trace).tolist() == [[8, -6, 0, 1], [5, 0, 0, 4]]
    cost = _cost(nn.Sequential(layer), torch.rand(3, 4))
    assert cost.csd.nonzero_digits == 7 and cost.sign_magnitude.magnitude_bits == 4


def test_float_and_binary_layers_have_no_integer_weights():
    assert _cost(nn.Sequential(nn.Linear(3, 2)), torch.rand(2, 3)).sign_magnitude is None
    layer = binarize_module(nn.Linear(3, 2), lambda w: XnorWeight(), nn.Identity())
    cost = _cost(nn.Sequential(layer), torch.rand(2, 3))
    assert cost.csd is None and cost.sign_magnitude is None


def test_a_weight_quantizer_the_model_does_not_know_is_named():
    class Halves(nn.Module):
        def forward(self, w):
            return torch.round(w * 2) / 2

    layer = nn.Linear(2, 1)
    quantize_layer(layer, Halves(), UniformQuantizer(4), 4, 4)
    with pytest.raises(SlimkitError, match=r"layer '0': cannot read integer weights from a Halves"):
        _cost(nn.Sequential(layer), torch.rand(2, 2))


def test_a_shift_over_a_few_fixed_positions_is_priced_as_a_multiplexer():
    # A 4-bit input shifted to one of 4 positions: a 4:1 multiplexer per bit, 3 two-input multiplexer bits
    # each, 12 in all; a shift over one position is wiring
    assert shift_mux_bits(4, 4) == 12 and shift_mux_bits(8, 1) == 0
    units = UnitCosts()
    shift = ops_energy({"mux2@1": 12}, units)
    assert shift == pytest.approx(12 * MUX2_PJ) and shift == pytest.approx(0.0197, abs=1e-4)  # was 0.1 (a 32-bit add)
    # so a one-term SP2 weight (one shift, one accumulating add) is cheaper than an int4 multiply-add at the
    # same accumulator, and a two-term one (two shifts and an 8-bit combining add) dearer
    int4 = unit(units, "int_mult", 4).energy_pj
    assert 12 * MUX2_PJ < int4 < 2 * 12 * MUX2_PJ + unit(units, "int_add", 8).energy_pj
    with pytest.raises(Exception, match="'shift': a shift is no longer priced as an add of its width"):
        UnitCosts(shift={8: {"energy_pj": 0.03, "area_um2": 36}})


def test_operand_reads_by_hand():
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0, 2, 0], [0, 0, 3, 4]]))
    cost = _cost(nn.Sequential(layer), torch.rand(3, 4))
    # 4 fp32 MACs per sample, each reading 32 + 32 bits from the 32 KiB SRAM (20 pJ per 64 bits): 80 pJ.
    # DRAM: the weights as a bitmap (8 + 4 x 32 = 136 bits; an index of 2 bits per weight ties it, dense takes
    # 256) and the 4 inputs (128 bits): 264 bits at 1280 pJ per 64
    m = cost.movement
    assert (m.weight_format, m.sram_bits, m.dram_bits) == ("bitmap", 256, 264)
    assert (m.sram_energy_pj, m.dram_energy_pj) == (pytest.approx(80), pytest.approx(264 / 64 * 1280))
    assert cost.energy_pj == pytest.approx(4 * 4.6 + 80 + 264 / 64 * 1280)
    # weights once per batch of 4, an 8 KiB SRAM (10 pJ per 64 bits)
    shared = _cost(nn.Sequential(layer), torch.rand(3, 4), ArithmeticConfig(batch=4, sram_kib=8)).movement
    assert (shared.dram_bits, shared.sram_energy_pj) == (136 / 4 + 128, pytest.approx(40))
    with pytest.raises(SlimkitError, match="lists SRAM reads up to 1024 KiB, and sram_kib is 2048"):
        _cost(nn.Sequential(layer), torch.rand(3, 4), ArithmeticConfig(sram_kib=2048))
