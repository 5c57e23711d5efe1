"""Cycles, PE utilisation and DRAM traffic of conv and linear layers on an R x C systolic array.

The mapping is Sense's: a pass holds one tile of R input channels on the rows and one tile of C filters on
the columns; PE (r, c) owns the kernel of filter f_c on channel ch_r, with n(r, c) non-zero weights (k = kh * kw
of them at most; k = 1 for a linear layer). Zero weights are skipped (weights stored compressed), zero inputs
too, at the measured density a(r) of channel r. PE (r, c) therefore does n(r, c) * a(r) multiply-accumulates per
output position, and the array runs in lockstep: every PE waits for the busiest one before the next output
position moves through. A pass costs

    lockstep      ceil(P * B * max_{r,c} n(r, c) a(r)) + (R + C - 1)
    stall-free    ceil(P * B * mean_{r,c} n(r, c) a(r)) + (R + C - 1)      (no PE ever waits: a lower bound)

with P output positions per sample, B samples and R + C - 1 cycles to fill and drain the array. The gap
between them splits exactly into
    weight stalls       P B (max_{r,c} n a - max_r mean_c n a)   PEs of one row differ; they share one input
                                                                  channel, so only their weights differ
    activation stalls   P B (max_r mean_c n a - mean_{r,c} n a)  rows differ: in input density, and in their
                                                                  kernels' total weights
Kernel-level balance (every kernel keeps the same count) leaves no weight stalls; balance per filter x tile
(one PE column) does not: its kernels keep anywhere from 0 to k. Sorting channels by zero fraction before
tiling (Sense's rearrangement) makes each tile's rows alike and cuts activation stalls. See docs/hardware.md
for the assumptions and where they depart from a real accelerator.

DRAM traffic follows the dataflow's loop order (Chen et al., Eyeriss, ISCA 2016):
  weight stationary   filters tile -> input tile -> positions: every weight read once; inputs read once if
                      they fit the input buffer, else once per filter tile; partial sums of a filter tile
                      spill to DRAM between input tiles when they do not fit the output buffer.
  output stationary   filter tile -> block of R positions -> input tile: partial sums never leave the array;
                      weights are read once if they fit the weight buffer, else once per position block.
Weights are stored dense or compressed (bitmap or index, `storage.py`), whichever is smallest. A layer takes
max(compute cycles, DRAM bytes / bandwidth) cycles: transfers overlap compute (double buffering), so the slower
of the two bounds it, and the layer is called bandwidth-bound when DRAM is the slower.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.hardware.config import SystolicConfig
from slimkit.hardware.storage import stored_weights
from slimkit.hardware.trace import LayerTrace, trace_layers

EPS = 1e-9  # products of measured fractions: 2.0000000001 cycles is 2


@dataclass
class SystolicLayerCost:
    """One layer on the array (per inference of `batch` samples). `compute_cycles` run in lockstep,
    `stall_free_cycles` is the bound no PE waits in; `bound` says which of compute and DRAM bandwidth set
    `cycles`."""

    name: str
    passes: int
    cycles: int
    compute_cycles: int
    stall_free_cycles: int
    dram_cycles: int
    bound: str
    ideal_cycles: float
    weight_stall_cycles: float
    activation_stall_cycles: float
    fill_cycles: int
    performed_macs: float
    utilization: float
    dram_bytes: int
    weight_bytes: int
    weight_format: str
    input_bytes: int
    output_bytes: int
    psum_bytes: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _tiles(count: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def rearrangement(input_density: Tensor) -> Tensor:
    """Sense's channel order: input channels by zero fraction, ascending (densest first), ties by index."""
    return torch.sort(1 - input_density, stable=True).indices


def layer_cost(weight: Tensor, positions: int, config: SystolicConfig, input_density: Tensor | None = None, *,
               input_positions: int | None = None, rearrange: bool = False, name: str = "layer"
               ) -> SystolicLayerCost:
    """The cost of one layer with canonical `weight` (out, in, ...) producing `positions` outputs per sample:
    lockstep compute cycles, and beside them `stall_free_cycles`, the layer's cycles had no PE ever waited
    (still at least the DRAM cycles).

    `input_density`: per input channel, the measured fraction of non-zero inputs (None: inputs treated as
    dense, nothing skipped). `input_positions`: input values per channel and sample (H * W of a conv's
    input; default `positions`), for the input traffic. `rearrange`: tile the channels in Sense's order
    (sorted by zero fraction) instead of their stored order; the weights' input dimension moves with them,
    a relabelling that leaves the function unchanged.
    """
    if weight.ndim < 2:
        raise SlimkitError(f"{name}: a weight of shape {tuple(weight.shape)} is no conv or linear weight")
    filters, channels = weight.shape[:2]
    kernel = math.prod(weight.shape[2:])
    density = torch.ones(channels) if input_density is None or not config.activation_sparsity else (
        input_density.detach().double().clone())
    if density.shape != (channels,):
        raise SlimkitError(f"{name}: input_density has {tuple(density.shape)} entries for {channels} channels")
    if rearrange:
        if input_density is None or not config.activation_sparsity:
            raise SlimkitError(f"{name}: rearrangement sorts channels by measured activation sparsity; give "
                               f"input_density and keep activation_sparsity on")
        order = rearrangement(density)
        weight, density = weight[:, order], density[order]
    nonzero = (weight != 0).reshape(filters, channels, kernel).sum(-1).double()
    if not config.skip_zero_weights:
        nonzero = torch.full_like(nonzero, float(kernel))
    samples = positions * config.batch
    fill_per_pass = config.rows + config.cols - 1
    ideal = weight_stall = activation_stall = 0.0
    compute = stall_free = passes = 0
    for t in _tiles(channels, config.rows):
        for u in _tiles(filters, config.cols):
            work = nonzero[u, t] * density[t]  # (columns, rows): n(r, c) a(r), MACs per PE and output position
            row_mean = work.mean(0)
            peak, row_peak, mean = float(work.max()), float(row_mean.max()), float(row_mean.mean())
            ideal += samples * mean
            weight_stall += samples * (peak - row_peak)
            activation_stall += samples * (row_peak - mean)
            compute += math.ceil(samples * peak - EPS) + fill_per_pass
            stall_free += math.ceil(samples * mean - EPS) + fill_per_pass
            passes += 1
    performed = samples * float((nonzero * density).sum())

    traffic, weight_format = _traffic(weight, positions, input_positions or positions, density, config)
    dram_cycles = math.ceil(traffic["dram_bytes"] / config.dram_bytes_per_cycle - EPS)
    cycles = max(compute, dram_cycles)
    return SystolicLayerCost(
        name=name, passes=passes, cycles=cycles, compute_cycles=compute, stall_free_cycles=max(stall_free, dram_cycles),
        dram_cycles=dram_cycles, bound="compute" if compute >= dram_cycles else "bandwidth", ideal_cycles=ideal,
        weight_stall_cycles=weight_stall, activation_stall_cycles=activation_stall, fill_cycles=passes * fill_per_pass,
        performed_macs=performed, utilization=performed / (config.rows * config.cols * cycles) if cycles else 0.0,
        weight_format=weight_format, **traffic)


def _traffic(weight: Tensor, positions: int, input_positions: int, density: Tensor,
             config: SystolicConfig) -> tuple[dict[str, int], str]:
    """DRAM bytes of one layer by the dataflow's loop order (module docstring). Weights take the smallest of
    the dense, bitmap and index formats (index positions inside a column's group of R x k weights); inputs are
    stored as a bitmap plus non-zero values when activation_sparsity is on and that is smaller."""
    filters, channels = weight.shape[:2]
    filter_tiles = math.ceil(filters / config.cols)
    input_tiles = math.ceil(channels / config.rows)
    group = min(config.rows, channels) * math.prod(weight.shape[2:])
    stored = stored_weights(weight, config.weight_bits, group, compressed=config.skip_zero_weights)
    weights = math.ceil(stored.bits / 8)
    values = channels * input_positions * config.batch
    inputs = math.ceil(values * config.activation_bits / 8)
    if config.activation_sparsity:
        nonzero_values = float(density.sum()) * input_positions * config.batch
        inputs = min(inputs, math.ceil((values + nonzero_values * config.activation_bits) / 8 - EPS))
    outputs = math.ceil(filters * positions * config.batch * config.activation_bits / 8)
    input_reads = 1 if inputs <= config.input_buffer_kib * 1024 else filter_tiles
    psums = 0
    weight_reads = 1
    if config.dataflow == "weight_stationary":
        tile_psums = math.ceil(config.cols * positions * config.batch * config.psum_bits / 8)
        if tile_psums > config.output_buffer_kib * 1024 and input_tiles > 1:
            psums = 2 * (input_tiles - 1) * math.ceil(filters * positions * config.batch * config.psum_bits / 8)
    elif weights > config.weight_buffer_kib * 1024:
        weight_reads = math.ceil(positions * config.batch / config.rows)
    return {"dram_bytes": weights * weight_reads + inputs * input_reads + outputs + psums,
            "weight_bytes": weights * weight_reads, "input_bytes": inputs * input_reads, "output_bytes": outputs,
            "psum_bytes": psums}, stored.format


def trace_cost(trace: LayerTrace, config: SystolicConfig, rearrange: bool = False) -> SystolicLayerCost:
    """`layer_cost` of one traced layer, with its measured input densities when activation_sparsity is on."""
    channels = trace.weight.shape[1]
    input_positions = math.prod(trace.input_shape) // channels
    return layer_cost(trace.weight, trace.positions, config, trace.input_density, input_positions=input_positions,
                      rearrange=rearrange, name=trace.name)


def systolic_costs(model: nn.Module, inputs: Sequence[Tensor], config: SystolicConfig, *,
                   rearrange: bool = False) -> list[SystolicLayerCost]:
    """Every conv and linear layer of `model` on the array, in call order; `inputs` are calibration batches
    (their activations give the measured input sparsity)."""
    return [trace_cost(trace, config, rearrange) for trace in trace_layers(model, inputs)]


def totals(costs: Sequence[SystolicLayerCost], config: SystolicConfig) -> dict[str, float]:
    """Whole-model cycles (lockstep, and the stall-free bound), DRAM bytes, stalls, utilisation (useful MACs
    over R x C x cycles) and how many layers DRAM bandwidth bounds."""
    cycles = sum(c.cycles for c in costs)
    performed = sum(c.performed_macs for c in costs)
    return {"cycles": cycles, "stall_free_cycles": sum(c.stall_free_cycles for c in costs),
            "compute_cycles": sum(c.compute_cycles for c in costs),
            "bandwidth_bound_layers": sum(c.bound == "bandwidth" for c in costs),
            "dram_bytes": sum(c.dram_bytes for c in costs),
            "weight_stall_cycles": sum(c.weight_stall_cycles for c in costs),
            "activation_stall_cycles": sum(c.activation_stall_cycles for c in costs),
            "utilization": performed / (config.rows * config.cols * cycles) if cycles else 0.0}
