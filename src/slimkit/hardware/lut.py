"""Neurons as FPGA lookup tables: a neuron with fan-in F (non-zero weights) and B-bit inputs is a boolean
function of F * B address bits, so its whole computation (weights, bias, activation, the next quantizer)
fits one truth table of 2^(F*B) entries of B_out bits. The cost grows as 2^(F*B): this is what makes the
sparsity and bit-width pair of each layer feasible or not. A partition (NeuraLUT's L-LUT) is a module whose
every output is such a table whatever float sub-network computes it inside: it is costed from its declared
fan-in, and its insides are not costed one by one.

LUT6 count and logic levels of one output bit of an n-input function (LogicNets' cost model, Umuroglu et al.,
FPL 2020):

    L(n) = 1,  D(n) = 1                                   for n <= 6 (one LUT6 holds any 6-input function)
    L(n) = (2^(n-4) - (-1)^n) / 3,  D(n) = 1 + ceil((n - 6) / 2)     for n > 6

which is the recursion L(n) = min(2 L(n-1) + 1, 4 L(n-2) + 1): split on one (two) address bits, build the
two (four) cofactors and select with a 2:1 (4:1) multiplexer, itself one LUT6 and one more level. The
minimum splits on two bits at even n and on one bit at odd n, so two address bits cost one level. A neuron
costs B_out * L(F*B) LUT6s; a conv neuron is replicated at every output position (a fully unrolled circuit,
as LogicNets builds).

Pipelining as LogicNets' generated Verilog does it (`--add-registers`): one register stage after every layer,
so a chain of layers has as many cycles of latency as layers, a layer's deepest neuron sets the logic levels
between two registers (the clock), and each stage holds B_out bits per neuron and output position.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.hardware.config import LutConfig, LutPartition
from slimkit.hardware.trace import layer_bits, output_path, trace_layers


def lut6_count(address_bits: int) -> int:
    """LUT6s for one output bit of a function of `address_bits` inputs (0 inputs: a constant, no LUT)."""
    if address_bits < 0:
        raise ValueError(f"a function has >= 0 inputs, not {address_bits}")
    if address_bits == 0:
        return 0
    if address_bits <= 6:
        return 1
    return (2 ** (address_bits - 4) - (-1) ** address_bits) // 3


def lut6_depth(address_bits: int) -> int:
    """Logic levels (LUT6s in series) of the same decomposition (0 inputs: a constant, no level)."""
    if address_bits < 0:
        raise ValueError(f"a function has >= 0 inputs, not {address_bits}")
    if address_bits == 0:
        return 0
    return 1 + max(0, math.ceil((address_bits - 6) / 2))


@dataclass
class NeuronLut:
    fan_in: int
    address_bits: int
    table_entries: int
    table_bits: int
    luts: int
    levels: int


def neuron_lut(fan_in: int, input_bits: int, output_bits: int) -> NeuronLut:
    """Truth-table size, LUT6 count and logic levels of one neuron (formulas in the module docstring)."""
    address = fan_in * input_bits
    entries = 2**address
    return NeuronLut(fan_in=fan_in, address_bits=address, table_entries=entries, table_bits=entries * output_bits,
                     luts=output_bits * lut6_count(address), levels=lut6_depth(address))


@dataclass
class LutLayerCost:
    """One layer (or partition) as LUTs. `luts` and `registers` are per layer: per-neuron counts summed, times
    the output positions of a conv; `levels` are the LUT6s in series of its deepest neuron."""

    name: str
    kind: str
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
    levels: int
    registers: int
    feasible: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fan_ins(weight: Tensor) -> list[int]:
    """Non-zero weights feeding each output (canonical weight, (out, in, ...))."""
    return (weight != 0).reshape(weight.shape[0], -1).sum(1).tolist()


def _cost(name: str, kind: str, fans: list[int], input_bits: int, output_bits: int, config: LutConfig,
          positions: int, output_bits_from: str) -> LutLayerCost:
    neurons = [neuron_lut(f, input_bits, output_bits) for f in fans]
    per_position = sum(n.luts for n in neurons)
    widest = max(neurons, key=lambda n: n.address_bits)
    return LutLayerCost(
        name=name, kind=kind, input_bits=input_bits, output_bits=output_bits, output_bits_from=output_bits_from,
        neurons=len(neurons), positions=positions, max_fan_in=widest.fan_in,
        mean_fan_in=sum(n.fan_in for n in neurons) / len(neurons), max_address_bits=widest.address_bits,
        max_table_bits=widest.table_bits, luts_per_position=per_position, luts=per_position * positions,
        levels=widest.levels, registers=output_bits * len(neurons) * positions,
        feasible=widest.address_bits <= config.max_table_bits)


def layer_lut(weight: Tensor, input_bits: int, output_bits: int, config: LutConfig, *, positions: int = 1,
              name: str = "layer", output_bits_from: str = "given") -> LutLayerCost:
    """LUT cost of a layer with canonical `weight`, `input_bits`-bit inputs and `output_bits`-bit outputs."""
    return _cost(name, "layer", fan_ins(weight), input_bits, output_bits, config, positions, output_bits_from)


def partition_lut(name: str, partition: LutPartition, neurons: int, output_bits: int, config: LutConfig, *,
                  positions: int = 1, output_bits_from: str = "given") -> LutLayerCost:
    """LUT cost of a partition: `neurons` outputs, each one table of its declared fan-in."""
    return _cost(name, "partition", [partition.fan_in] * neurons, partition.input_bits, output_bits, config,
                 positions, output_bits_from)


@dataclass
class _PartitionCall:
    """What a partition's forward showed: its first input batch and its output's neurons and positions."""

    order: int
    inputs: Tensor
    neurons: int
    positions: int


@torch.no_grad()
def _calls(model: nn.Module, inputs: Sequence[Tensor], partitions: Sequence[str],
           layers: Sequence[str]) -> tuple[dict[str, int], dict[str, _PartitionCall]]:
    """The first-call order of `layers` and `partitions` in one forward, and each partition's call."""
    order: dict[str, int] = {}
    seen: dict[str, _PartitionCall] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            order.setdefault(name, len(order))
            if name in partitions and name not in seen:
                channel_dim = 1 if output.ndim > 2 else output.ndim - 1
                neurons = output.shape[channel_dim]
                seen[name] = _PartitionCall(order[name], args[0].detach(), neurons,
                                            output.numel() // output.shape[0] // neurons)
        return record

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in (*partitions, *layers)]
    was_training = model.training
    model.eval()
    try:
        model(inputs[0])
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    missing = [name for name in partitions if name not in seen]
    if missing:
        raise SlimkitError(f"measure.hardware.lut.partitions: {missing[0]!r} is not called in the model's forward")
    return order, seen


def measured_fan_in(module: nn.Module, x: Tensor, samples: int = 4) -> int:
    """The most inputs any output of `module` depends on, from its Jacobian at the first `samples` samples of
    the batch `x` it received: an input counts where a derivative is non-zero. A dependency no sample exercises
    (a ReLU dead on all of them) is missed, so this can only show a declared fan-in too small."""
    reads: Tensor | None = None
    was_training = module.training
    module.eval()
    try:
        for sample in x[:samples].float():
            with torch.enable_grad():
                jacobian = torch.autograd.functional.jacobian(lambda v: module(v.unsqueeze(0)).squeeze(0), sample)
            out = jacobian.shape[: jacobian.ndim - sample.ndim]
            nonzero = (jacobian != 0).reshape(math.prod(out), sample.numel())
            reads = nonzero if reads is None else reads | nonzero
    finally:
        module.train(was_training)
    return int(reads.sum(1).max()) if reads is not None else 0


def lut_costs(model: nn.Module, inputs: Sequence[Tensor], config: LutConfig) -> list[LutLayerCost]:
    """Every conv and linear layer of `model` as LUTs, and every partition `config` names, in call order.
    Input bits are each layer's own (32 for float inputs: a float layer is reported, and is infeasible);
    output bits are those of the quantizer that next reads the output (through element-wise ops), or
    `final_output_bits` where the output leaves the model. An output that meets anything else first (a
    residual add) is an error naming it; so is a partition whose outputs read more inputs than its fan-in."""
    partitions = list(config.partitions)
    traces = trace_layers(model, inputs, opaque=partitions)

    def output_bits(name: str, declared: int | None = None) -> tuple[int, str]:
        if declared is not None:
            return declared, "output_bits"
        path = output_path(model, name, leaves=partitions)
        if path.reader_name in config.partitions:
            return config.partitions[path.reader_name].input_bits, f"input of {path.reader_name}"
        if path.reader is not None:
            return layer_bits(path.reader)[1], f"input of {path.reader_name}"
        return config.final_output_bits, "final_output_bits"

    costs = []
    for trace in traces:
        bits, source = output_bits(trace.name)
        costs.append(layer_lut(trace.weight, trace.input_bits, bits, config, positions=trace.positions,
                               name=trace.name, output_bits_from=source))
    if not partitions:
        return costs
    order, calls = _calls(model, inputs, partitions, [t.name for t in traces])
    for name, partition in config.partitions.items():
        call = calls[name]
        reads = measured_fan_in(model.get_submodule(name), call.inputs)
        if reads > partition.fan_in:
            raise SlimkitError(f"measure.hardware.lut.partitions.{name}: an output reads {reads} inputs, more than "
                               f"its fan_in {partition.fan_in}; a table of {partition.fan_in} inputs cannot compute it")
        bits, source = output_bits(name, partition.output_bits)
        costs.append(partition_lut(name, partition, call.neurons, bits, config, positions=call.positions,
                                   output_bits_from=source))
    return sorted(costs, key=lambda c: order[c.name])


def lut_totals(costs: Sequence[LutLayerCost]) -> dict[str, Any]:
    """Whole-model LUT6s, registers and logic levels, with one register stage per layer (module docstring):
    latency in cycles is the number of stages, and the deepest stage sets the clock."""
    return {"luts": sum(c.luts for c in costs), "registers": sum(c.registers for c in costs),
            "levels": sum(c.levels for c in costs), "pipeline_stages": len(costs),
            "latency_cycles": len(costs), "max_levels_per_stage": max((c.levels for c in costs), default=0),
            "infeasible_layers": [c.name for c in costs if not c.feasible]}
