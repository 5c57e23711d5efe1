"""The systolic-array model against hand-computed cases: PEs in lockstep (the busiest PE sets each output
position's pace) beside the stall-free bound, the stall split, the stored weight formats, and the shape of
Sense's claims: kernel-balanced weights keep every PE in lockstep, balance per filter x tile (one PE column)
does not, and sorting channels by zero fraction (rearrangement) removes stalls from activation sparsity."""

import pytest
import torch
from torch import nn

from slimkit.hardware import SystolicConfig, layer_cost, stored_weights, systolic_costs, totals, trace_layers
from slimkit.metrics import count_macs
from slimkit.sparsity.balanced import balanced_mask, is_balanced
from slimkit.sparsity.nm import nm_mask

WEIGHTS_ONLY = SystolicConfig(rows=2, cols=2, activation_sparsity=False)


def _conv(rows: list[list[list[float]]]) -> torch.Tensor:
    """A (filters, channels, 1, k) conv weight from nested lists."""
    return torch.tensor(rows).unsqueeze(2)


def test_lockstep_on_a_hand_computed_2x2_array():
    # 2 filters x 2 channels of 1x4 kernels: one pass on a 2x2 array; PE (r, c) holds filter c's kernel on
    # channel r. Non-zeros n(r, c): filter 0 keeps 3 on channel 0 and 1 on channel 1, filter 1 keeps 1 and 3,
    # so each column (filter x tile group) keeps 4 of 8: balanced per group, not per kernel.
    # Channel densities a = (1, 0.5), P = 10 positions. Work n(r, c) a(r) per position:
    #   column 0: 3 x 1 = 3, 1 x 0.5 = 0.5;  column 1: 1 x 1 = 1, 3 x 0.5 = 1.5
    # lockstep: the busiest PE, 3 -> ceil(10 x 3) + fill (2 + 2 - 1) = 33
    # stall-free: mean 1.5 -> 15 + 3 = 18; row means (3 + 1) / 2 = 2 and (0.5 + 1.5) / 2 = 1
    # weight stalls 10 x (3 - 2) = 10 (PEs of one row differ), activation stalls 10 x (2 - 1.5) = 5
    group_balanced = _conv([[[1, 1, 1, 0], [0, 0, 0, 1]], [[0, 1, 0, 0], [1, 1, 0, 1]]])
    density = torch.tensor([1.0, 0.5])
    config = SystolicConfig(rows=2, cols=2)
    cost = layer_cost(group_balanced, 10, config, density)
    assert is_balanced(group_balanced, 2, 0.5) and not is_balanced(group_balanced, 1, 0.5)
    assert (cost.compute_cycles, cost.stall_free_cycles, cost.fill_cycles) == (33, 18, 3)
    assert (cost.ideal_cycles, cost.weight_stall_cycles, cost.activation_stall_cycles) == (15, 10, 5)
    # 10 x (3 + 1 + (1 + 3) x 0.5) = 60 MACs over 4 PEs x 33 cycles
    assert cost.performed_macs == 60 and cost.utilization == pytest.approx(60 / (4 * 33))
    # kernel-balanced, 2 of 4 in every kernel: work 2, 1 in both columns -> 20 + 3 = 23 cycles, no weight stall
    kernel_balanced = _conv([[[1, 1, 0, 0], [0, 0, 1, 1]], [[1, 0, 1, 0], [0, 1, 0, 1]]])
    even = layer_cost(kernel_balanced, 10, config, density)
    assert (even.compute_cycles, even.stall_free_cycles, even.weight_stall_cycles) == (23, 18, 0)
    assert even.activation_stall_cycles == 5  # rows of density 1 and 0.5: 10 x 2 x (1 - 0.75)


def test_without_activations_unstructured_stalls_and_dense_is_the_reference():
    # filter 0 keeps 2 and 1 on channels 0 and 1, filter 1 keeps 0 and 1: the busiest PE holds 2 of its 2
    unstructured = _conv([[[1, 1], [1, 0]], [[0, 0], [0, 1]]])
    dense = torch.ones(2, 2, 1, 2)
    u, d = layer_cost(unstructured, 10, WEIGHTS_ONLY), layer_cost(dense, 10, WEIGHTS_ONLY)
    assert (u.compute_cycles, d.compute_cycles) == (20 + 3, 20 + 3)  # lockstep: no faster than dense
    # half the MACs: mean work 1 -> 10 + 3 stall-free; both rows hold 2 weights in all, so every stall is a
    # weight stall, 10 x (2 - 1)
    assert u.stall_free_cycles == 10 + 3 and u.performed_macs == 40
    assert (u.weight_stall_cycles, u.activation_stall_cycles) == (10, 0)
    assert d.weight_stall_cycles == d.activation_stall_cycles == 0 and d.stall_free_cycles == 23


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
    assert cost.dram_bytes == 144 and cost.cycles == 144 and cost.bound == "bandwidth"
    assert cost.stall_free_cycles == 144  # the stall-free bound is bounded by DRAM too


def test_sense_claims_on_a_resnet20_layer():
    """ResNet-20's layer2 conv: 32 filters x 32 channels, 3x3, 16x16 outputs, on Sense's 8x8 array (tile 8).
    Kernel-balanced 1/2 (every kernel keeps 4 of 9) keeps all 64 PEs equal; balance per filter x 8-channel tile
    (36 of each column's 72), 2:4 along input channels and unstructured pruning with the same count leave some
    PEs fuller than others, and in lockstep those set the pace."""
    torch.manual_seed(0)
    scores = torch.randn(32, 32, 3, 3).abs()
    kernel = scores * balanced_mask(scores, 1, 0.5)
    group = scores * balanced_mask(scores, 8, 0.5)
    nm = scores * nm_mask(scores, 2, 4)
    keep = int((group != 0).sum())
    threshold = scores.flatten().sort(descending=True).values[keep - 1]
    unstructured = scores * (scores >= threshold)
    assert is_balanced(kernel, 1, 0.5) and int((unstructured != 0).sum()) == int((nm != 0).sum()) == keep
    config = SystolicConfig(activation_sparsity=False)
    costs = {name: layer_cost(w, 16 * 16, config) for name, w in
             {"kernel": kernel, "group": group, "nm": nm, "unstructured": unstructured, "dense": scores}.items()}
    # kernel-balanced: 16 passes of 256 x 4 + 15 fill, no stall; dense: 256 x 9 + 15
    assert costs["kernel"].compute_cycles == costs["kernel"].stall_free_cycles == 16 * (256 * 4 + 15)
    assert costs["kernel"].weight_stall_cycles == 0
    assert costs["dense"].compute_cycles == 16 * (256 * 9 + 15)
    for name in ("group", "nm", "unstructured"):
        # the same work as group balance (36 of 72 per column: 256 x 4.5 per pass) if no PE waited ...
        assert costs[name].stall_free_cycles == 16 * (256 * 9 // 2 + 15), name
        # ... but some PE of every pass holds more than 4.5 weights, and the pass waits for it
        assert costs[name].weight_stall_cycles > 0 and costs[name].compute_cycles > costs[name].stall_free_cycles
        assert costs["kernel"].compute_cycles < costs[name].compute_cycles <= costs["dense"].compute_cycles
    assert costs["kernel"].utilization > costs["group"].utilization
    assert costs["kernel"].weight_bytes < costs["dense"].weight_bytes


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


def test_weights_take_the_smallest_stored_format():
    # 4 filters x 8 channels x 3x3 = 288 8-bit weights, half kept (4 or 5 per kernel). Dense: 288 B. Bitmap:
    # 288 bits + 144 x 8 bits = 180 B. Index: a column's group is 8 channels x 9 = 72 weights, 7 bits per
    # position: 144 x (8 + 7) bits = 270 B. The bitmap wins.
    weight = torch.zeros(4, 8, 3, 3)
    weight.view(-1)[::2] = 1.0
    assert int(weight.count_nonzero()) == 144
    assert (stored_weights(weight, 8, 72).format, stored_weights(weight, 8, 72).bits) == ("bitmap", 180 * 8)
    cost = layer_cost(weight, 4, SystolicConfig(activation_sparsity=False))
    assert (cost.weight_format, cost.weight_bytes) == ("bitmap", 180)
    # 4 of 288 kept: bitmap (288 + 32) / 8 = 40 B, index 4 x 15 bits = 8 B (7.5 rounded up)
    sparse = torch.zeros(4, 8, 3, 3)
    sparse[:, 0, 0, 0] = 1.0
    cost = layer_cost(sparse, 4, SystolicConfig(activation_sparsity=False))
    assert (cost.weight_format, cost.weight_bytes) == ("index", 8)
    # stored uncompressed when zero weights are not skipped
    dense_only = layer_cost(sparse, 4, SystolicConfig(activation_sparsity=False, skip_zero_weights=False))
    assert (dense_only.weight_format, dense_only.weight_bytes) == ("dense", 288)


def test_totals_report_lockstep_beside_the_stall_free_bound_and_bandwidth_bound_layers():
    config = SystolicConfig(rows=2, cols=2, dram_bytes_per_cycle=3.0)
    # a: the 2x2 example above, 33 lockstep and 18 stall-free cycles; DRAM: weights as a bitmap (16 + 8 x 8
    # bits = 10 B), inputs as bitmap + non-zeros ((20 + 15 x 8) / 8 -> 18 B), outputs 20 B: 48 B, 16 cycles.
    # b: 2x2 dense 1x1, P = 16: one pass of 16 + 3 = 19 cycles; DRAM 4 + 32 + 32 = 68 B, 23 cycles.
    costs = [layer_cost(_conv([[[1, 1, 1, 0], [0, 0, 0, 1]], [[0, 1, 0, 0], [1, 1, 0, 1]]]), 10, config,
                        torch.tensor([1.0, 0.5]), name="a"),
             layer_cost(torch.ones(2, 2, 1, 1), 16, config, name="b")]
    assert [(c.bound, c.dram_bytes, c.dram_cycles) for c in costs] == [("compute", 48, 16), ("bandwidth", 68, 23)]
    t = totals(costs, config)
    assert (t["cycles"], t["stall_free_cycles"], t["bandwidth_bound_layers"]) == (33 + 23, 18 + 23, 1)
