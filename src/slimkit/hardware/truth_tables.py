"""Truth tables of a sparse, quantized layer's neurons (`slimkit export --format truth-tables`): every input
combination of a neuron of a linear or conv layer, and what the model's quantized forward gives for it, up to
the quantizer that next reads the output. A conv neuron is one output channel: its inputs are the
(input channel, kh, kw) taps where its filter is non-zero, and since the same filter slides over the map, its
one table holds at every output position.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import SlimkitError, UnsupportedLayerError
from slimkit.hardware.config import LutConfig
from slimkit.hardware.trace import output_path
from slimkit.layers import canonical_weight, conv_pair, layer_kind
from slimkit.quant.quantizers import LevelQuantizer, UniformQuantizer


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
