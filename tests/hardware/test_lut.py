"""LUT mapping against hand-computed counts, levels and registers, sub-network partitions (NeuraLUT), and truth
tables against the model's quantized forward."""

import itertools
import json

import pytest
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.hardware import (
    LutConfig,
    layer_lut,
    lut6_count,
    lut6_depth,
    lut_costs,
    lut_totals,
    neuron_lut,
    truth_tables,
)
from slimkit.quant.attach import quantize_layer
from slimkit.quant.quantizers import UniformQuantizer


def test_lut6_count_by_multiplexer_decomposition():
    # <= 6 inputs: one LUT6. 7: two 6-input cofactors + a 2:1 mux = 3. 8: four cofactors + a 4:1 mux
    # (6 inputs, one LUT6) = 5. 9: min(2 x 5 + 1, 4 x 3 + 1) = 11. 10: min(2 x 11 + 1, 4 x 5 + 1) = 21.
    # 12: min(2 x 43 + 1, 4 x 21 + 1) = 85 (11: min(2 x 21 + 1, 4 x 11 + 1) = 43).
    assert [lut6_count(n) for n in (0, 1, 6, 7, 8, 9, 10, 11, 12)] == [0, 1, 1, 3, 5, 11, 21, 43, 85]


def test_lut6_depth_follows_the_cheapest_decomposition():
    def cheapest(n: int) -> tuple[int, int]:
        """(LUT6s, levels) of the recursion itself: a 2:1 split on one bit or a 4:1 split on two."""
        if n <= 6:
            return 1, 1
        (c1, d1), (c2, d2) = cheapest(n - 1), cheapest(n - 2)
        return min((2 * c1 + 1, d1 + 1), (4 * c2 + 1, d2 + 1))

    assert [cheapest(n) for n in range(1, 19)] == [(lut6_count(n), lut6_depth(n)) for n in range(1, 19)]
    # 12 address bits: three 4:1 levels above the 6-input tables
    assert (lut6_depth(0), lut6_depth(6), lut6_depth(7), lut6_depth(8), lut6_depth(12)) == (0, 1, 2, 2, 4)


def test_neuron_table_and_luts():
    # fan-in 3 at 2 bits: 6 address bits, 2^6 = 64 entries of 2 bits = 128 bits, one LUT6 per output bit.
    n = neuron_lut(3, 2, 2)
    assert (n.address_bits, n.table_entries, n.table_bits, n.luts) == (6, 64, 128, 2)
    # fan-in 4 at 2 bits: 8 address bits, 256 entries; 3 output bits x 5 LUT6s = 15
    assert neuron_lut(4, 2, 3).luts == 15


def test_layer_lut_sums_neurons_and_unrolls_positions():
    # fan-ins 2, 3, 0 at 2-bit inputs, 3-bit outputs: 3 x L(4) + 3 x L(6) + 0 = 6 LUT6s per position
    weight = torch.tensor([[1.0, 1, 0, 0], [1, 0, 1, 1], [0, 0, 0, 0]])
    cost = layer_lut(weight, 2, 3, LutConfig(max_table_bits=6), positions=5)
    assert (cost.luts_per_position, cost.luts, cost.max_fan_in, cost.max_address_bits) == (6, 30, 3, 6)
    assert cost.max_table_bits == 64 * 3 and cost.feasible
    assert not layer_lut(weight, 3, 3, LutConfig(max_table_bits=6)).feasible  # 3 x 3 = 9 address bits


def _quantized(layer: nn.Module, bits: int, step: float) -> nn.Module:
    quantizer = UniformQuantizer(bits, layer.weight.shape[0], signed=True)
    quantizer.calibrate(layer.weight.detach())
    inputs = UniformQuantizer(bits, signed=False)
    with torch.no_grad():
        inputs.step.fill_(step)
    inputs.initialized.fill_(True)
    quantize_layer(layer, quantizer, inputs, bits, bits)
    return layer


def sparse_mlp() -> nn.Sequential:
    """6 -> 4 -> 3 -> 2, 2-bit unsigned inputs everywhere, at most 3 non-zero weights per neuron."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    masks = {0: torch.tensor([[1, 1, 0, 0, 0, 1], [0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 0, 0, 0, 0, 0]]),
             2: torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 0]])}
    with torch.no_grad():
        for index, mask in masks.items():
            signs = torch.where(torch.rand(mask.shape) < 0.5, -1.0, 1.0)
            model[index].weight.copy_(mask * signs)  # +-1 survives 2-bit quantization: fan-in is the mask's
        model[3].running_mean.copy_(torch.tensor([0.1, -0.2, 0.05]))
        model[3].running_var.copy_(torch.tensor([0.5, 2.0, 1.0]))
    for index, step in ((0, 0.5), (2, 0.3), (5, 0.25)):
        _quantized(model[index], 2, step)
    return model.eval()


def _capture(model: nn.Module, layer: str, reader: str | None, x_layer: torch.Tensor, x_model: torch.Tensor):
    """The model's own forward with `layer`'s input replaced by x_layer; what `reader`'s quantizer hands it
    (a pre-hook registered after the quantizing one sees the quantized input), or the model's output."""
    seen = {}
    replace = model.get_submodule(layer).register_forward_pre_hook(lambda m, args: (x_layer,))
    handles = [replace]
    if reader is not None:
        handles.append(model.get_submodule(reader).register_forward_pre_hook(
            lambda m, args: seen.setdefault("x", args[0].clone())))
    try:
        with torch.no_grad():
            out = model(x_model)
    finally:
        for h in handles:
            h.remove()
    return seen["x"] if reader is not None else out


@pytest.mark.parametrize(("layer", "reader"), [("0", "2"), ("2", "5"), ("5", None)])
def test_truth_tables_match_the_quantized_forward_on_every_input(tmp_path, layer, reader):
    model = sparse_mlp()
    path = tmp_path / "tables.json"
    path.write_text(json.dumps(truth_tables(model, layer)))
    tables = json.loads(path.read_text())
    grid = torch.tensor(tables["input_values"])
    assert tables["input_bits"] == 2 and len(grid) == 4 and tables["kind"] == "linear"
    assert tables["output"]["kind"] == ("code" if reader else "float")
    module = model.get_submodule(layer)
    for neuron in tables["neurons"]:
        cols = neuron["inputs"]
        assert cols == torch.nonzero(module.weight[neuron["index"]] != 0).flatten().tolist()
        combos = list(itertools.product(range(4), repeat=len(cols)))
        assert len(neuron["table"]) == len(combos) == 4 ** len(cols)
        x = torch.zeros(len(combos), module.in_features)
        x[:, cols] = grid[torch.tensor(combos)].reshape(len(combos), len(cols))
        got = _capture(model, layer, reader, x, torch.zeros(len(combos), 6))[:, neuron["index"]]
        if reader:
            values = torch.tensor(tables["output"]["values"])
            assert torch.equal(values[torch.tensor(neuron["table"])], got)
        else:
            assert torch.allclose(torch.tensor(neuron["table"]), got, atol=1e-6)


def test_a_table_too_large_is_refused_naming_layer_fan_in_and_bits():
    model = sparse_mlp()
    with pytest.raises(SlimkitError, match=r"layer '0': neuron 0 has fan-in 3 at 2 input bits, a truth table of "
                                           r"2\^6 entries; the limit is 2\^5"):
        truth_tables(model, "0", max_table_bits=5)


def test_truth_tables_need_a_quantized_linear_or_conv_layer():
    with pytest.raises(SlimkitError, match="not quantized"):
        truth_tables(nn.Sequential(nn.Linear(2, 2)), "0")
    with pytest.raises(SlimkitError, match="not quantized"):
        truth_tables(nn.Sequential(nn.Conv2d(1, 1, 1)), "0")
    with pytest.raises(SlimkitError, match="written for linear and 2-d conv layers; '0' is Embedding"):
        truth_tables(nn.Sequential(nn.Embedding(4, 2)), "0")
    grouped = nn.Conv2d(2, 2, 1, groups=2)
    _quantized(grouped, 2, 0.5)
    with pytest.raises(SlimkitError, match=r"'0': a grouped conv \(groups=2\)"):
        truth_tables(nn.Sequential(grouped), "0")


def sparse_cnn(stride: int, padding: int | str, dilation: int) -> nn.Sequential:
    """conv 2 -> 3 (3x3, the given geometry), BatchNorm, ReLU, conv 3 -> 2 (1x1); 2-bit unsigned inputs,
    at most 3 non-zero taps per filter."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=stride, padding=padding, dilation=dilation), nn.BatchNorm2d(3),
                          nn.ReLU(), nn.Conv2d(3, 2, 1))
    first = torch.zeros(3, 2, 3, 3)
    for j, taps in enumerate([[(0, 0, 0), (1, 1, 1), (0, 2, 2)], [(1, 0, 2), (1, 2, 0)], [(0, 1, 1)]]):
        for tap in taps:
            first[(j, *tap)] = 1
    masks = {0: first, 3: torch.tensor([[1.0, 0, 1], [1, 1, 1]]).reshape(2, 3, 1, 1)}
    with torch.no_grad():
        for index, mask in masks.items():
            signs = torch.where(torch.rand(mask.shape) < 0.5, -1.0, 1.0)
            model[index].weight.copy_(mask * signs)
        model[1].running_mean.copy_(torch.tensor([0.1, -0.2, 0.05]))
        model[1].running_var.copy_(torch.tensor([0.5, 2.0, 1.0]))
    for index, step in ((0, 0.5), (3, 0.3)):
        _quantized(model[index], 2, step)
    return model.eval()


@pytest.mark.parametrize(("stride", "padding", "dilation"), [(2, 1, 1), (1, "same", 2), (1, 0, 1)])
@pytest.mark.parametrize(("layer", "reader"), [("0", "3"), ("3", None)])
def test_conv_truth_tables_match_the_quantized_forward_at_several_positions(stride, padding, dilation, layer,
                                                                              reader):
    model = sparse_cnn(stride, padding, dilation)
    tables = json.loads(json.dumps(truth_tables(model, layer)))
    module = model.get_submodule(layer)
    assert tables["kind"] == "conv" and tables["output"]["kind"] == ("code" if reader else "float")
    assert tables["kernel_size"] == list(module.kernel_size) and tables["out_channels"] == module.out_channels
    assert max(len(set(n["table"])) for n in tables["neurons"]) >= 3  # not a constant function everywhere
    grid = torch.tensor(tables["input_values"])
    size = 9  # a 9 x 9 map into the model; every checked window lies inside the map, away from the padding
    with torch.no_grad():
        feature = model[:3](torch.zeros(1, 2, size, size)) if layer == "3" else torch.zeros(1, 2, size, size)
    k, d = module.kernel_size[0], module.dilation[0]
    s = module.stride[0]
    p = (d * (k - 1) // 2) if module.padding == "same" else module.padding[0]
    positions = [(oh, ow) for oh in range(feature.shape[2]) for ow in range(feature.shape[3])
                 if oh * s - p >= 0 and ow * s - p >= 0 and oh * s - p + d * (k - 1) < feature.shape[2]
                 and ow * s - p + d * (k - 1) < feature.shape[3]]
    assert len(positions) >= 2
    for neuron in tables["neurons"]:
        taps = neuron["inputs"]
        assert taps == torch.nonzero(module.weight[neuron["index"]] != 0).tolist()
        combos = list(itertools.product(range(len(grid)), repeat=len(taps)))
        assert len(neuron["table"]) == len(combos) == len(grid) ** len(taps)
        values = grid[torch.tensor(combos)].reshape(len(combos), len(taps))
        for oh, ow in (positions[0], positions[-1]):
            # the patch under output (oh, ow): input row oh * s - p + u * d, column ow * s - p + v * d
            x = torch.zeros(len(combos), *feature.shape[1:])
            for t, (c, u, v) in enumerate(taps):
                x[:, c, oh * s - p + u * d, ow * s - p + v * d] = values[:, t]
            got = _capture(model, layer, reader, x, torch.zeros(len(combos), 2, size, size))
            got = got[:, neuron["index"], oh, ow]
            if reader:
                assert torch.equal(torch.tensor(tables["output"]["values"])[torch.tensor(neuron["table"])], got)
            else:
                assert torch.allclose(torch.tensor(neuron["table"]), got, atol=1e-6)


def test_a_conv_table_too_large_is_refused_naming_layer_fan_in_and_bits():
    # output channel 0 has 3 taps at 2 input bits: 2^6 entries
    with pytest.raises(SlimkitError, match=r"layer '0': output channel 0 has fan-in 3 at 2 input bits, a truth "
                                           r"table of 2\^6 entries; the limit is 2\^5"):
        truth_tables(sparse_cnn(1, 1, 1), "0", max_table_bits=5)


def test_lut_costs_of_a_model_take_bits_from_the_reading_quantizer():
    model = sparse_mlp()
    costs = {c.name: c for c in lut_costs(model, [torch.randn(8, 6)], LutConfig(final_output_bits=4))}
    # layer 0: fan-ins 3, 2, 3, 1 at 2 bits in and 2 bits out (read by layer 2): all <= 6 address bits,
    # 2 LUT6s each = 8. Layer 5 (fan-in 3) writes the logits at final_output_bits = 4: 4 x L(6) x 2 = 8.
    assert costs["0"].luts == 8 and costs["0"].output_bits_from == "input of 2"
    assert costs["5"].output_bits == 4 and costs["5"].luts == 8 and costs["5"].output_bits_from == "final_output_bits"
    # one register stage per layer: 4 x 2 + 3 x 2 + 2 x 4 bits; every table fits one LUT6, one level each
    assert [(c.registers, c.levels) for c in costs.values()] == [(8, 1), (6, 1), (8, 1)]
    totals = lut_totals(list(costs.values()))
    assert (totals["luts"], totals["registers"], totals["levels"]) == (8 + 6 + 8, 22, 3)
    assert (totals["pipeline_stages"], totals["latency_cycles"], totals["max_levels_per_stage"]) == (3, 3, 1)


class SubNetworks(nn.Module):
    """NeuraLUT's layer: output j reads `fan_in` fixed inputs through its own small float network (a hidden
    layer, a shared linear map inside, and a skip connection); only its inputs and output are quantized."""

    def __init__(self, inputs: int, outputs: int, fan_in: int, width: int):
        super().__init__()
        self.register_buffer("index", torch.stack([torch.randperm(inputs)[:fan_in] for _ in range(outputs)]))
        self.up = nn.Parameter(torch.randn(outputs, fan_in, width))
        self.inner = nn.Linear(width, width)
        self.down = nn.Parameter(torch.randn(outputs, width))
        self.skip = nn.Parameter(torch.randn(outputs, fan_in))

    def forward(self, x):
        gathered = x[:, self.index]  # (batch, outputs, fan_in)
        hidden = torch.relu(self.inner(torch.relu(torch.einsum("bof,ofw->bow", gathered, self.up))))
        return (hidden * self.down).sum(-1) + (gathered * self.skip).sum(-1)


def neuralut_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(SubNetworks(6, 4, 2, 8), SubNetworks(4, 3, 2, 8), _quantized(nn.Linear(3, 2), 2, 0.5)).eval()


def test_a_partition_is_one_table_per_output_of_its_declared_fan_in():
    partitions = {"0": {"fan_in": 2, "input_bits": 3}, "1": {"fan_in": 2, "input_bits": 2}}
    costs = lut_costs(neuralut_mlp(), [torch.randn(8, 6)], LutConfig(partitions=partitions, final_output_bits=4))
    # "0": 4 outputs of 2 x 3 = 6 address bits, 2 output bits (partition "1" reads 2-bit inputs): 4 x 2 LUT6s.
    # "1": 3 outputs of 2 x 2 bits, read by layer 2's 2-bit quantizer: 3 x 2. Layer 2: 2 neurons of 3 x 2 bits
    # at final_output_bits 4: 2 x 4. The linear layer inside each partition is not costed on its own.
    assert [(c.name, c.kind, c.luts, c.output_bits_from) for c in costs] == [
        ("0", "partition", 8, "input of 1"), ("1", "partition", 6, "input of 2"),
        ("2", "layer", 8, "final_output_bits")]
    assert [c.max_address_bits for c in costs] == [6, 4, 6]


def test_a_partition_reading_more_inputs_than_its_fan_in_is_refused():
    partitions = {"0": {"fan_in": 1, "input_bits": 3}, "1": {"fan_in": 2, "input_bits": 2}}
    with pytest.raises(SlimkitError, match=r"partitions.0: an output reads 2 inputs, more than its fan_in 1"):
        lut_costs(neuralut_mlp(), [torch.randn(8, 6)], LutConfig(partitions=partitions))


def test_lut_costs_refuse_an_output_that_meets_a_residual_add():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.b(self.a(x) + x)

    with pytest.raises(SlimkitError, match="layer 'a': its output meets call_function"):
        lut_costs(Residual(), [torch.randn(2, 2)], LutConfig())
