"""One calibration point per hardware model: the model on a configuration whose hardware figure is published,
the published figure, the model's, and their ratio, as docs/hardware.md states them. A model that cannot
reproduce its figure keeps the ratio it gets, and the docs say why."""

import itertools
import math

import pytest
import torch
from torch import nn

from slimkit.hardware import (
    ArithmeticConfig,
    LutConfig,
    SystolicConfig,
    arithmetic_costs,
    layer_cost,
    layer_lut,
    lut_totals,
)
from slimkit.sparsity.balanced import balanced_mask

# --- LUT model: LogicNets' jet-substructure networks ---------------------------------------------------------
# Configurations: Xilinx/logicnets, examples/jet_substructure/train.py (16 inputs, 5 classes). Published
# results: its README, "attained when training on a CPU and synthesising with Vivado 2019.2" (LUTs, flip-flops,
# latency in cycles).
LOGICNETS = {
    "jsc-s": {"hidden": [64, 32, 32, 32], "bits": (2, 2, 2), "fan_in": (3, 3, 3), "published": (232, 268, 5)},
    "jsc-m": {"hidden": [64, 32, 32, 32], "bits": (3, 3, 3), "fan_in": (4, 4, 4), "published": (14576, 803, 5)},
    "jsc-l": {"hidden": [32, 64, 192, 192, 16], "bits": (4, 3, 7), "fan_in": (3, 4, 5),
              "published": (38925, 2418, 6)},
}
# what docs/hardware.md states: the model's LUT6s, registers and latency, and the LUT ratio model / published
LOGICNETS_MODEL = {"jsc-s": (330, 330, 5, 1.42), "jsc-m": (42075, 495, 5, 2.89), "jsc-l": (150385, 1523, 6, 3.86)}


def _sparse(outputs: int, inputs: int, fan_in: int, generator: torch.Generator) -> torch.Tensor:
    """A weight whose every output reads exactly `fan_in` inputs (LogicNets' random sparse connectivity)."""
    weight = torch.zeros(outputs, inputs)
    for row in weight:
        row[torch.randperm(inputs, generator=generator)[:fan_in]] = 1.0
    return weight


def logicnets_costs(name: str):
    config = LOGICNETS[name]
    input_bits, hidden_bits, output_bits = config["bits"]
    input_fan_in, hidden_fan_in, output_fan_in = config["fan_in"]
    widths = [16, *config["hidden"], 5]
    generator = torch.Generator().manual_seed(0)
    costs = []
    for i, (inputs, outputs) in enumerate(itertools.pairwise(widths)):
        first, last = i == 0, i == len(widths) - 2
        fan_in = input_fan_in if first else output_fan_in if last else hidden_fan_in
        costs.append(layer_lut(_sparse(outputs, inputs, fan_in, generator), input_bits if first else hidden_bits,
                               output_bits if last else hidden_bits, LutConfig(), name=str(i)))
    return costs


@pytest.mark.parametrize("name", list(LOGICNETS))
def test_lut_model_against_logicnets_synthesis(name):
    totals = lut_totals(logicnets_costs(name))
    luts, registers, latency, ratio = LOGICNETS_MODEL[name]
    published_luts, _, published_latency = LOGICNETS[name]["published"]
    assert (totals["luts"], totals["registers"], totals["latency_cycles"]) == (luts, registers, latency)
    # latency: one register stage per layer, as LogicNets pipelines them: exactly the published cycles
    assert totals["latency_cycles"] == published_latency
    # LUT6s: an upper bound, further above synthesis the larger the tables (6, 12 and up to 15 address bits)
    assert round(totals["luts"] / published_luts, 2) == ratio


def test_lut_model_on_neuraluts_released_mnist_configuration():
    """NeuraLUT's hdr-5l (MartaAndronic/NeuraLUT, datasets/mnist/train.py): 784 -> 256 -> 100 -> 100 -> 100 -> 10,
    fan-in 6, 2-bit activations. Every neuron is one table of 12 address bits, 85 LUT6s and 4 levels per output
    bit, whatever sub-network computes it: a model output under the LogicNets cost, with no published figure
    re-checked here (docs/hardware.md)."""
    widths = [784, 256, 100, 100, 100, 10]
    costs = [layer_lut(torch.ones(outputs, 6), 2, 2, LutConfig(), name=str(i))
             for i, outputs in enumerate(widths[1:])]
    totals = lut_totals(costs)
    assert (totals["luts"], totals["levels"], totals["latency_cycles"]) == (566 * 2 * 85, 5 * 4, 5) == (96220, 20, 5)


# --- systolic model: Sense on VGG-16 ------------------------------------------------------------------------
# Sense (Sun et al., arXiv:2202.00389 v2, abstract): ZCU102 at 200 MHz, VGG-16 at 34 images/s. The array size
# is read from v1's 409.6 GOP/s peak: 409.6e9 / (2 ops x 200e6) = 1024 MACs per cycle, a 32 x 32 array. The
# ZCU102's 64-bit DDR4-2400 (19.2 GB/s) gives 96 bytes per cycle at 200 MHz.
VGG16_CONVS = [(3, 64, 224), (64, 64, 224), (64, 128, 112), (128, 128, 112), (128, 256, 56), (256, 256, 56),
               (256, 256, 56), (256, 512, 28), (512, 512, 28), (512, 512, 28), (512, 512, 14), (512, 512, 14),
               (512, 512, 14)]
SENSE_ARRAY = SystolicConfig(rows=32, cols=32, dram_bytes_per_cycle=96, activation_sparsity=False)
SENSE_CLOCK_HZ = 200e6
SENSE_PUBLISHED_IMAGES_PER_S = 34.0
SENSE_MODEL_IMAGES_PER_S = 28.07  # docs/hardware.md: ratio 0.83


def vgg16_costs(balance_tile: int):
    """VGG-16's 13 convs (3x3, same padding) pruned to 1/2 in balanced groups of one filter x `balance_tile`
    input channels (1: every kernel keeps 4 of 9), on Sense's array with dense inputs."""
    torch.manual_seed(0)
    costs = []
    for inputs, outputs, size in VGG16_CONVS:
        scores = torch.rand(outputs, inputs, 3, 3)
        costs.append(layer_cost(balanced_mask(scores, balance_tile, 0.5).float(), size * size, SENSE_ARRAY))
    return costs


def test_systolic_model_against_senses_vgg16_throughput():
    costs = vgg16_costs(1)
    # every kernel keeps 4 of 9, so every PE of a pass does 4 MACs per output position, and no PE waits: each of
    # ceil(in / 32) x ceil(out / 32) passes takes 4 P + 63 cycles, and no layer is bandwidth-bound at 96 B/cycle
    expected = sum(math.ceil(i / 32) * math.ceil(o / 32) * (4 * s * s + 63) for i, o, s in VGG16_CONVS)
    cycles = sum(c.cycles for c in costs)
    assert cycles == sum(c.stall_free_cycles for c in costs) == expected == 7_125_314
    assert all(c.bound == "compute" and c.weight_format == "bitmap" for c in costs)
    images_per_s = SENSE_CLOCK_HZ / cycles
    assert round(images_per_s, 2) == SENSE_MODEL_IMAGES_PER_S
    assert round(images_per_s / SENSE_PUBLISHED_IMAGES_PER_S, 2) == 0.83


def test_group_balance_on_the_same_array_waits_for_its_fullest_pe():
    """The same VGG-16 with 1/2 kept per filter x 32-channel group (144 of each column's 288): the same work
    would take 4.5 P per pass if no PE waited, but some PE of every pass holds 8 or 9 of its kernel's 9."""
    costs = vgg16_costs(32)
    lockstep, stall_free = sum(c.cycles for c in costs), sum(c.stall_free_cycles for c in costs)
    assert stall_free == sum(math.ceil(i / 32) * math.ceil(o / 32) * (math.ceil(4.5 * s * s) + 63)
                             for i, o, s in VGG16_CONVS if i >= 32) + costs[0].stall_free_cycles
    assert lockstep > 1.7 * stall_free  # near the dense 9 P per pass
    # docs/hardware.md: 12.98 images/s in lockstep against 25.04 stall-free (these random scores, seed 0), and
    # 12.57 with dense weights (9 P + 63 per pass)
    assert (round(SENSE_CLOCK_HZ / lockstep, 1), round(SENSE_CLOCK_HZ / stall_free, 2)) == (13.0, 25.04)
    dense = sum(math.ceil(i / 32) * math.ceil(o / 32) * (9 * s * s + 63) for i, o, s in VGG16_CONVS)
    assert dense == sum(layer_cost(torch.ones(o, i, 3, 3), s * s, SENSE_ARRAY).cycles for i, o, s in VGG16_CONVS)
    assert round(SENSE_CLOCK_HZ / dense, 2) == 12.57 and lockstep < dense


# --- arithmetic model: Horowitz's 45 nm table -----------------------------------------------------------------
def test_arithmetic_model_against_horowitzs_table():
    """Horowitz, ISSCC 2014 (45 nm, 0.9 V): fp32 multiply 3.7 pJ and add 0.9 pJ; a 32-bit read from an 8 KB SRAM
    5 pJ, from DRAM 640 pJ. One fp32 MAC whose weight and input come from an 8 KiB SRAM (and once from DRAM)."""
    layer = nn.Linear(1, 1, bias=False)
    [cost] = arithmetic_costs(nn.Sequential(layer), [torch.ones(1, 1)], ArithmeticConfig(sram_kib=8))
    published = {"mac": 3.7 + 0.9, "sram": 2 * 5.0, "dram": 2 * 640.0}
    model = {"mac": cost.compute_energy_pj, "sram": cost.movement.sram_energy_pj,
             "dram": cost.movement.dram_energy_pj}
    assert model == pytest.approx(published)  # ratio 1.00: the model applies the table as printed
