"""The systolic-array model against hand-computed cases, and the shape of Sense's claims: balanced weights keep
the array's columns in lockstep where unstructured weights stall it, and sorting channels by zero fraction
(rearrangement) removes stalls from activation sparsity."""

import pytest
import torch
from torch import nn

from slimkit.hardware import SystolicConfig, layer_cost, systolic_costs, totals, trace_layers
from slimkit.metrics import count_macs
from slimkit.sparsity.balanced import balanced_mask, is_balanced
from slimkit.sparsity.nm import nm_mask

WEIGHTS_ONLY = SystolicConfig(rows=2, cols=2, activation_sparsity=False)


def _conv(rows: list[list[list[float]]]) -> torch.Tensor:
    """A (filters, channels, 1, k) conv weight from nested lists."""
    return torch.tensor(rows).unsqueeze(2)


def test_balanced_groups_run_in_lockstep_and_unstructured_stalls():
    # 2 filters x 2 channels, 1x2 kernels: one pass on a 2x2 array, each column's group holds 4 weights.
    # P = 10 output positions, batch 1; a pass costs ceil(P * max_c n_c / rows) + (rows + cols - 1) cycles.
    balanced = _conv([[[1, 0], [0, 1]], [[1, 1], [0, 0]]])      # n = 2, 2 -> 2/2 = 1 per row
    unstructured = _conv([[[1, 1], [1, 0]], [[0, 0], [0, 1]]])  # n = 3, 1 -> 1.5 and 0.5 per row
    dense = torch.ones(2, 2, 1, 2)                              # n = 4, 4 -> 2 per row
    b = layer_cost(balanced, 10, WEIGHTS_ONLY)
    u = layer_cost(unstructured, 10, WEIGHTS_ONLY)
    d = layer_cost(dense, 10, WEIGHTS_ONLY)
    assert (b.compute_cycles, u.compute_cycles, d.compute_cycles) == (10 + 3, 15 + 3, 20 + 3)
    assert b.weight_stall_cycles == 0
    assert u.weight_stall_cycles == pytest.approx(10 * (1.5 - 1.0))  # (max - mean) per row x P
    # both do the same 4 x 10 = 40 MACs; utilisation is MACs over 4 PEs x cycles
    assert b.performed_macs == u.performed_macs == 40
    assert b.utilization == pytest.approx(40 / (4 * 13))
    assert u.utilization == pytest.approx(40 / (4 * 18))
    assert d.utilization == pytest.approx(80 / (4 * 23))


def test_without_zero_skipping_sparsity_buys_no_cycles():
    config = SystolicConfig(rows=2, cols=2, activation_sparsity=False, skip_zero_weights=False)
    sparse = _conv([[[1, 0], [0, 1]], [[1, 1], [0, 0]]])
    assert layer_cost(sparse, 10, config).compute_cycles == layer_cost(torch.ones(2, 2, 1, 2), 10,
                                                                         config).compute_cycles == 23


def test_rearrangement_groups_channels_of_like_sparsity():
    # One filter, 4 channels of 1x1 weights on a 2-row array: two passes (channel tiles), P = 8.
    # Channel densities 1, 1/4, 1, 1/4. Stored order tiles {0, 1} and {2, 3}: each tile's densest row is 1,
    # so each pass takes 8 * 1 * 1 = 8 cycles + fill 2 + 1 - 1 = 2: 20 cycles.
    # Sorted by zero fraction: {0, 2} (8 + 2) and {1, 3} (8 * 1/4 = 2, + 2): 14 cycles.
    config = SystolicConfig(rows=2, cols=1)
    weight = torch.ones(1, 4, 1, 1)
    density = torch.tensor([1.0, 0.25, 1.0, 0.25])
    plain = layer_cost(weight, 8, config, density)
    sorted_ = layer_cost(weight, 8, config, density, rearrange=True)
    assert (plain.compute_cycles, sorted_.compute_cycles) == (20, 14)
    # activation stall per pass: P x mean_w (1) x (max_a - mean_a) = 8 x (1 - 0.625) = 3, two passes
    assert plain.activation_stall_cycles == pytest.approx(6)
    assert sorted_.activation_stall_cycles == 0
    # DRAM: inputs as bitmap + non-zeros: 4 x 8 bits + (1 + .25 + 1 + .25) x 8 values x 8 bits = 192 bits
    # = 24 bytes (dense: 32); weights 4 x 8 bits = 4 bytes (indexed: 4 x (8 + 1) bits is larger);
    # outputs 8 x 8 bits = 8 bytes; partial sums fit the 64 KiB buffer. 36 bytes in 3 cycles at 16 B/cycle.
    assert (plain.input_bytes, plain.weight_bytes, plain.output_bytes, plain.psum_bytes) == (24, 4, 8, 0)
    assert plain.dram_bytes == 36 and plain.dram_cycles == 3 and plain.bound == "compute"


def test_rearrangement_needs_measured_density():
    with pytest.raises(Exception, match="rearrangement sorts channels by measured activation sparsity"):
        layer_cost(torch.ones(1, 4, 1, 1), 8, SystolicConfig(), None, rearrange=True)


@pytest.mark.parametrize(("dataflow", "expected"), [("weight_stationary", (16, 128, 64, 512, 720)),
                                                    ("output_stationary", (128, 128, 64, 0, 320))])
def test_dataflow_sets_what_dram_carries(dataflow, expected):
    # 4 filters x 4 channels 1x1, dense, 8-bit, P = 16 on a 2x2 array with 10.24-byte buffers: nothing fits.
    # weights 16 B; inputs 4 x 16 = 64 B, re-read for each of the 2 filter tiles = 128 B; outputs 64 B.
    # weight stationary: a filter tile's partial sums (2 x 16 x 4 B = 128 B) spill between its 2 input tiles:
    #   2 x (2 - 1) x (4 x 16 x 4 B) = 512 B.  Total 16 + 128 + 64 + 512 = 720.
    # output stationary: no partial sums leave the array; weights re-read per block of 2 positions:
    #   16 / 2 = 8 blocks x 16 B = 128 B.  Total 128 + 128 + 64 = 320.
    config = SystolicConfig(rows=2, cols=2, dataflow=dataflow, activation_sparsity=False, skip_zero_weights=False,
                            input_buffer_kib=0.01, weight_buffer_kib=0.01, output_buffer_kib=0.01)
    cost = layer_cost(torch.ones(4, 4, 1, 1), 16, config)
    assert (cost.weight_bytes, cost.input_bytes, cost.output_bytes, cost.psum_bytes, cost.dram_bytes) == expected
    # compute: 4 passes of 16 x 1 + 3 = 76 cycles; DRAM 720 / 16 = 45 or 320 / 16 = 20 cycles
    assert cost.compute_cycles == 76 and cost.cycles == 76


def test_memory_bound_layer_takes_its_dram_cycles():
    config = SystolicConfig(rows=2, cols=2, activation_sparsity=False, dram_bytes_per_cycle=1.0)
    cost = layer_cost(torch.ones(4, 4, 1, 1), 16, config)  # 16 + 64 + 64 = 144 B at 1 B/cycle
    assert cost.dram_bytes == 144 and cost.cycles == 144 and cost.bound == "memory"


def test_sense_claims_on_a_resnet20_layer():
    """ResNet-20's layer2 conv: 32 filters x 32 channels, 3x3, 16x16 outputs, on Sense's 8x8 array (tile 8).
    The same number of weights kept three ways: kernel-balanced 1/2 (Sense), 2:4 along input channels, and
    unstructured (global magnitude). Balanced and N:M columns hold equal work, so they never stall on
    weights; unstructured stalls and takes longer for the same MACs."""
    torch.manual_seed(0)
    scores = torch.randn(32, 32, 3, 3).abs()
    balanced = scores * balanced_mask(scores, 8, 0.5)
    nm = scores * nm_mask(scores, 2, 4)
    keep = int((balanced != 0).sum())
    threshold = scores.flatten().sort(descending=True).values[keep - 1]
    unstructured = scores * (scores >= threshold)
    assert is_balanced(balanced, 8, 0.5) and int((unstructured != 0).sum()) == int((nm != 0).sum()) == keep
    config = SystolicConfig(activation_sparsity=False)
    costs = {name: layer_cost(w, 16 * 16, config) for name, w in
             {"balanced": balanced, "nm": nm, "unstructured": unstructured, "dense": scores}.items()}
    assert costs["balanced"].weight_stall_cycles == costs["nm"].weight_stall_cycles == 0
    assert costs["unstructured"].weight_stall_cycles > 0
    assert costs["balanced"].compute_cycles < costs["unstructured"].compute_cycles < costs["dense"].compute_cycles
    assert costs["balanced"].utilization > costs["unstructured"].utilization
    # balanced 1/2 halves the work: 16 passes of 256 x 36/8 = 1152 cycles + 15 fill, against 256 x 9 + 15
    assert costs["balanced"].compute_cycles == 16 * (1152 + 15)
    assert costs["dense"].compute_cycles == 16 * (2304 + 15)
    assert costs["balanced"].weight_bytes < costs["dense"].weight_bytes


class DeadChannels(nn.Module):
    """conv1's channels 1 and 3 are always 0 after the ReLU (zero weights, negative bias)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 2, 3, padding=1)
        with torch.no_grad():
            self.conv1.weight.zero_()
            self.conv1.bias.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0]))

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def test_measured_activation_sparsity_and_rearrangement_on_a_model():
    model = DeadChannels()
    x = torch.randn(4, 3, 6, 6)
    traces = {t.name: t for t in trace_layers(model, [x])}
    assert traces["conv2"].input_density.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert {n: t.macs for n, t in traces.items()} == count_macs(model, (3, 6, 6))
    config = SystolicConfig(rows=2, cols=2)
    plain = {c.name: c for c in systolic_costs(model, [x], config)}
    moved = {c.name: c for c in systolic_costs(model, [x], config, rearrange=True)}
    # conv2, stored order: tiles {0, 1}, {2, 3}, each with a dense row: 2 x (36 x 9 + 3) = 654 cycles.
    # Sorted: {0, 2} dense (36 x 9 + 3 = 327) and {1, 3} all zero (fill only, 3): 330 cycles.
    assert plain["conv2"].compute_cycles == 654 and moved["conv2"].compute_cycles == 330
    assert moved["conv2"].activation_stall_cycles == 0 < plain["conv2"].activation_stall_cycles
    assert totals(list(moved.values()), config)["cycles"] < totals(list(plain.values()), config)["cycles"]
