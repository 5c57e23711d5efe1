"""Neurons as FPGA lookup tables: a neuron with fan-in F (non-zero weights) and B-bit inputs is a boolean
function of F * B address bits, so its whole computation (weights, bias, activation, the next quantizer)
fits one truth table of 2^(F*B) entries of B_out bits. The cost grows as 2^(F*B): this is what makes the
sparsity and bit-width pair of each layer feasible or not.

LUT6 count of one output bit of an n-input function (LogicNets' cost model, Umuroglu et al., FPL 2020):

    L(n) = 1                              for n <= 6 (one LUT6 holds any 6-input function)
    L(n) = (2^(n-4) - (-1)^n) / 3         for n > 6

which is the recursion L(n) = min(2 L(n-1) + 1, 4 L(n-2) + 1): split on one (two) address bits, build the
two (four) cofactors and select with a 2:1 (4:1) multiplexer, itself one LUT6. A neuron costs B_out * L(F*B)
LUT6s; a conv neuron is replicated at every output position (a fully unrolled circuit, as LogicNets builds).

Truth tables (`truth_tables`, `slimkit export --format truth-tables`) enumerate every input combination of a
neuron of a sparse, quantized linear or conv layer and record what the model's quantized forward gives, up to
the quantizer that next reads the output. A conv neuron is one output channel: its inputs are the
(input channel, kh, kw) taps where its filter is non-zero, and since the same filter slides over the map, its
one table holds at every output position.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import SlimkitError, UnsupportedLayerError
from slimkit.hardware.config import LutConfig
from slimkit.hardware.trace import layer_bits, output_path, trace_layers
from slimkit.layers import canonical_weight, conv_pair, layer_kind
from slimkit.quant.quantizers import LevelQuantizer, UniformQuantizer


def lut6_count(address_bits: int) -> int:
    """LUT6s for one output bit of a function of `address_bits` inputs (0 inputs: a constant, no LUT)."""
    if address_bits < 0:
        raise ValueError(f"a function has >= 0 inputs, not {address_bits}")
    if address_bits == 0:
        return 0
    if address_bits <= 6:
        return 1
    return (2 ** (address_bits - 4) - (-1) ** address_bits) // 3


@dataclass
class NeuronLut:
    fan_in: int
    address_bits: int
    table_entries: int
    table_bits: int
    luts: int


def neuron_lut(fan_in: int, input_bits: int, output_bits: int) -> NeuronLut:
    """Truth-table size and LUT6 count of one neuron (formula in the module docstring)."""
    address = fan_in * input_bits
    entries = 2**address
    return NeuronLut(fan_in=fan_in, address_bits=address, table_entries=entries, table_bits=entries * output_bits,
                     luts=output_bits * lut6_count(address))


@dataclass
class LutLayerCost:
    """One layer as LUTs. `luts` is per layer: per-neuron LUTs summed, times the output positions of a conv."""

    name: str
    input_bits: int
    output_bits: int
    output_bits_from: str
    neurons: int
    positions: int
    max_fan_in: int
    mean_fan_in: float
    max_address_bits: int
    max_table_bits: int
    luts_per_position: int
    luts: int
    feasible: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fan_ins(weight: Tensor) -> list[int]:
    """Non-zero weights feeding each output (canonical weight, (out, in, ...))."""
    return (weight != 0).reshape(weight.shape[0], -1).sum(1).tolist()


def layer_lut(weight: Tensor, input_bits: int, output_bits: int, config: LutConfig, *, positions: int = 1,
              name: str = "layer", output_bits_from: str = "given") -> LutLayerCost:
    """LUT cost of a layer with canonical `weight`, `input_bits`-bit inputs and `output_bits`-bit outputs."""
    neurons = [neuron_lut(f, input_bits, output_bits) for f in fan_ins(weight)]
    per_position = sum(n.luts for n in neurons)
    widest = max(neurons, key=lambda n: n.address_bits)
    return LutLayerCost(
        name=name, input_bits=input_bits, output_bits=output_bits, output_bits_from=output_bits_from,
        neurons=len(neurons), positions=positions, max_fan_in=widest.fan_in,
        mean_fan_in=sum(n.fan_in for n in neurons) / len(neurons), max_address_bits=widest.address_bits,
        max_table_bits=widest.table_bits, luts_per_position=per_position, luts=per_position * positions,
        feasible=widest.address_bits <= config.max_table_bits)


def lut_costs(model: nn.Module, inputs: Sequence[Tensor], config: LutConfig) -> list[LutLayerCost]:
    """Every conv and linear layer of `model` as LUTs. Input bits are each layer's own (32 for float
    inputs: a float layer is reported, and is infeasible); output bits are those of the quantizer that
    next reads the output (through element-wise ops), or `final_output_bits` where the output leaves the
    model. An output that meets anything else first (a residual add) is an error naming it."""
    costs = []
    for trace in trace_layers(model, inputs):
        path = output_path(model, trace.name)
        if path.reader is not None:
            out_bits, source = layer_bits(path.reader)[1], f"input of {path.reader_name}"
        else:
            out_bits, source = config.final_output_bits, "final_output_bits"
        costs.append(layer_lut(trace.weight, trace.input_bits, out_bits, config, positions=trace.positions,
                               name=trace.name, output_bits_from=source))
    return costs


# --- truth tables ---------------------------------------------------------------------------------------------

def quantizer_grid(quantizer: nn.Module, where: str) -> Tensor:
    """Every value a per-tensor input quantizer can output, ascending: its codes times its step (uniform),
    or its levels times its clip (level sets)."""
    if isinstance(quantizer, UniformQuantizer) and quantizer.channels == 1:
        step = float(quantizer.step.detach().reshape(()))
        return torch.arange(quantizer.qmin, quantizer.qmax + 1, dtype=torch.float32) * step
    if isinstance(quantizer, LevelQuantizer) and not quantizer.standardize:
        return quantizer.levels.detach().float() * quantizer.alpha.detach().float()
    raise UnsupportedLayerError(f"{where}: its inputs are not quantized per tensor ({type(quantizer).__name__}); "
                                f"truth tables need a uniform or level-set input quantizer")


def _codes(values: Tensor, grid: Tensor, where: str) -> list[int]:
    """Index of each value in `grid`; a value off the grid means the quantizer did not produce it."""
    index = torch.argmin((values.unsqueeze(-1) - grid).abs(), dim=-1)
    off = (grid[index] - values).abs() > 1e-6 * grid.abs().max().clamp_min(1e-12)
    if bool(off.any()):
        raise SlimkitError(f"{where}: output {float(values[off][0])} is not on its quantizer's grid")
    return index.tolist()


@dataclass
class _ConvProbe:
    """An input map on which one output position of a conv sees exactly its kernel's taps, none of them
    padding: per spatial dim with kernel k, stride s, padding p and dilation d, the receptive field spans
    r = d (k - 1) + 1 inputs; output position o = ceil(p / s) starts at padded index o s, which is input index
    offset = o s - p (0 <= offset < s), so a map of offset + r inputs holds the window whole (whatever the
    padding mode) and tap u sits at input index offset + u d."""

    size: tuple[int, int]
    offset: tuple[int, int]
    dilation: tuple[int, int]
    position: tuple[int, int]

    @classmethod
    def of(cls, module: nn.Conv2d, where: str) -> _ConvProbe:
        if module.groups != 1:
            raise UnsupportedLayerError(f"{where}: a grouped conv (groups={module.groups}); truth tables map "
                                        f"dense-channel convs only")
        kernel, stride, dilation = (conv_pair(module.kernel_size), conv_pair(module.stride),
                                    conv_pair(module.dilation))
        if not isinstance(module.padding, str):
            padding = conv_pair(module.padding)
        elif module.padding == "same":  # torch pads d (k - 1) // 2 before (stride 1)
            padding = (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
        else:  # "valid", the only other mode Conv2d takes
            padding = (0, 0)
        size, offset, position = [], [], []
        for k, s, p, d in zip(kernel, stride, padding, dilation, strict=True):
            o = -(-p // s)
            offset.append(o * s - p)
            size.append(o * s - p + d * (k - 1) + 1)
            position.append(o)
        return cls(conv_pair(tuple(size)), conv_pair(tuple(offset)), dilation, conv_pair(tuple(position)))

    def inputs(self, patches: Tensor) -> Tensor:
        """(N, C, kh, kw) tap values -> (N, C, H, W) maps that put them under `position`'s window."""
        x = patches.new_zeros(*patches.shape[:2], *self.size)
        (oh, ow), (dh, dw), (kh, kw) = self.offset, self.dilation, patches.shape[2:]
        x[:, :, oh:oh + dh * (kh - 1) + 1:dh, ow:ow + dw * (kw - 1) + 1:dw] = patches
        return x


@torch.no_grad()
def truth_tables(model: nn.Module, layer: str, max_table_bits: int = LutConfig().max_table_bits,
                 chunk: int = 4096) -> dict[str, Any]:
    """Each neuron's truth table of the linear or conv layer `layer` (a dict, JSON-ready).

    A linear neuron is an output feature; its inputs are the non-zero columns of its weight row, ascending. A
    conv neuron is an output channel; its inputs are the [input channel, kh, kw] taps where its filter is
    non-zero, in ascending (row-major) order, and its table holds at every output position (the model's
    forward is evaluated at one position whose window reads no padding, see `_ConvProbe`).
    Entry i of a neuron's table is its output when its inputs take grid values whose indices are the base-L
    digits of i, first input most significant (L = the number of input values); every other input is 0, which
    its zero weight ignores. The output is the code (index into `output.values`) of the quantizer that next
    reads it, or the float output where none does. A neuron whose table would exceed 2^max_table_bits entries
    is refused, naming the layer, the neuron, its fan-in and the input bits.
    """
    module = model.get_submodule(layer)
    kind = layer_kind(module)
    if kind is None or (kind == "conv" and not isinstance(module, nn.Conv2d)):
        raise UnsupportedLayerError(f"truth tables are written for linear and 2-d conv layers; {layer!r} is "
                                    f"{type(module).__name__}")
    weight = canonical_weight(module).detach()
    quantizer = getattr(module, "input_quantizer", None)
    if not isinstance(quantizer, nn.Module):
        raise UnsupportedLayerError(f"{layer!r}: its inputs are not quantized (no input quantizer); truth tables "
                                    f"need quantized inputs")
    probe = _ConvProbe.of(module, repr(layer)) if isinstance(module, nn.Conv2d) and kind == "conv" else None
    grid = quantizer_grid(quantizer, repr(layer))
    input_bits = max(1, math.ceil(math.log2(len(grid))))
    columns = [torch.nonzero(row.flatten() != 0).flatten().tolist() for row in weight]
    widest = max(range(len(columns)), key=lambda j: len(columns[j]))
    if len(columns[widest]) * input_bits > max_table_bits:
        f = len(columns[widest])
        who = f"output channel {widest}" if probe else f"neuron {widest}"
        raise SlimkitError(f"layer {layer!r}: {who} has fan-in {f} at {input_bits} input bits, a truth "
                           f"table of 2^{f * input_bits} entries; the limit is 2^{max_table_bits} (max_table_bits). "
                           f"Prune the layer further, quantize its inputs to fewer bits, or raise the limit")
    path = output_path(model, layer)
    out_grid = quantizer_grid(path.quantizer, repr(path.reader_name)) if path.quantizer is not None else None
    per_neuron = weight[0].numel()
    was_training = model.training
    model.eval()
    neurons = []
    try:
        for j, cols in enumerate(columns):
            table: list[Any] = []
            combos = itertools.product(range(len(grid)), repeat=len(cols))
            while batch := list(itertools.islice(combos, chunk)):
                x = torch.zeros(len(batch), per_neuron)
                if cols:
                    x[:, cols] = grid[torch.tensor(batch, dtype=torch.long).reshape(len(batch), len(cols))]
                if probe is None:
                    y = path.apply(module(x))[:, j]
                else:
                    y = path.apply(module(probe.inputs(x.reshape(len(batch), *weight.shape[1:]))))
                    y = y[:, j, probe.position[0], probe.position[1]]
                table += _codes(y, out_grid, repr(path.reader_name)) if out_grid is not None else y.tolist()
            inputs = cols if probe is None else torch.nonzero(weight[j] != 0).tolist()  # row-major = cols' order
            neurons.append({"index": j, "inputs": inputs, "table": table})
    finally:
        model.train(was_training)
    output: dict[str, Any] = ({"kind": "code", "read_by": path.reader_name,
                               "bits": max(1, math.ceil(math.log2(len(out_grid)))), "values": out_grid.tolist()}
                              if out_grid is not None else {"kind": "float"})
    shape: dict[str, Any] = ({"in_features": weight.shape[1], "out_features": weight.shape[0]}
                             if not isinstance(module, nn.Conv2d) or probe is None else
                             {"in_channels": weight.shape[1], "out_channels": weight.shape[0],
                              "kernel_size": list(weight.shape[2:]), "stride": list(module.stride),
                              "padding": module.padding if isinstance(module.padding, str) else list(module.padding),
                              "dilation": list(module.dilation)})
    return {"format": "slimkit-truth-tables/1", "layer": layer, "kind": kind, **shape, "input_bits": input_bits,
            "input_values": grid.tolist(), "output": output, "neurons": neurons}
