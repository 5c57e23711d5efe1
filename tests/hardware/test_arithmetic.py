"""Arithmetic counts and energy against hand-computed layers."""

import pytest
import torch
from torch import nn

from slimkit.binary.binarizers import XnorWeight
from slimkit.binary.layers import binarize_module
from slimkit.errors import SlimkitError
from slimkit.hardware import ArithmeticConfig, UnitCosts, arithmetic_costs
from slimkit.hardware.arithmetic import level_terms, unit
from slimkit.quant.attach import quantize_layer
from slimkit.quant.levels import apot_levels, sp2_levels
from slimkit.quant.quantizers import LevelQuantizer, UniformQuantizer


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
    # terms: row 0: 1 + 2 + 0 + 1 = 4, row 1: 2 + 0 + 0 + 1 = 3: 7 shifts and 7 adds (t - 1 to combine the
    # terms of a weight, 1 to accumulate it); one fp32 rescale per output (2 outputs).
    # fan-ins 3 and 2: tree depth ceil(log2 3) = 2, accumulator 4 + 4 + 2 = 10 bits -> the 16-bit entries.
    assert cost.form == "shift-add"
    assert cost.ops == {"shift@10": 7, "int_add@10": 7, "fp_mult@32": 2}
    assert (cost.max_fan_in, cost.adder_tree_depth, cost.accumulator_bits) == (3, 2, 10)
    assert cost.energy_pj == pytest.approx(7 * 0.05 + 7 * 0.05 + 2 * 3.7)
    assert cost.dense_float_energy_pj == pytest.approx(8 * (3.7 + 0.9))  # 8 weights as fp32 MACs


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
    assert cost.energy_pj == pytest.approx(4.6)
    cheap = UnitCosts(int_mult={8: {"energy_pj": 0.1, "area_um2": 1}}, source="my process")
    assert _cost(nn.Sequential(layer), torch.rand(2, 3), ArithmeticConfig(units=cheap)).energy_pj == \
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
    assert cost.energy_pj == pytest.approx(15 * 0.03 / 8 + 12 * 0.03 + 3 * 3.7)


def test_float_conv_counts_every_nonzero_mac():
    conv = nn.Conv2d(2, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        conv.weight[0, 1, 0, 0] = 2.0
    cost = _cost(nn.Sequential(conv), torch.randn(1, 2, 4, 4))
    # 16 output positions x 2 non-zero weights = 32 fp32 multiply-adds; dense would be 16 x 18 = 288
    assert cost.ops == {"fp_mult@32": 32, "fp_add@32": 32}
    assert cost.dense_float_energy_pj == pytest.approx(288 * 4.6)


def test_unit_lookup_takes_the_next_wider_entry_and_refuses_wider_than_the_table():
    units = UnitCosts()
    assert unit(units, "int_add", 12).energy_pj == 0.05
    assert unit(units, "int_mult", 9).energy_pj == 3.1
    with pytest.raises(SlimkitError, match="lists int_add up to 32 bits, and this layer needs 40"):
        unit(units, "int_add", 40)
