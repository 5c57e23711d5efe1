"""Inference modules that replace compressed layers: packed binary conv/linear and sparse conv/linear.

Each is built once from a trained layer (weights packed or compressed at build time), holds only buffers,
and runs a compiled numba kernel. Binary layers reproduce the training graph's eval output exactly (the
same +-1/0 sums, then the same float scale and bias); sparse layers sum in another order (within 1e-5).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba
import numpy as np
import torch
from torch import Tensor, nn

from slimkit.binary.binarizers import ActivationBinarizer
from slimkit.binary.functions import sign
from slimkit.binary.layers import BinaryConv2d, BinaryLinear
from slimkit.layers import canonical_weight, layer_bias
from slimkit.runtime.eager import binary_kernels, pattern_kernels, sparse_kernels
from slimkit.runtime.layouts import conv_by_output, linear_by_output_row

FKW_ARRAYS = ("reorder", "offset", "index", "stride", "weights", "patterns")  # pattern_conv's argument order
GROUP_ARRAYS = ("slots", "group_ptr", "row_ptr", "chan", "tap", "weights")  # grouped_conv's argument order


class NotDeployable(ValueError):
    """A layer this runtime cannot replace exactly; it stays as it is, and the reason is reported."""


@contextmanager
def kernel_threads(batch: int, threads: int | None) -> Iterator[int]:
    """numba threads for one kernel call: 1 at batch 1 (waking threads costs more than it buys), else
    `threads` (default: torch's setting). Yields the count.

    numba's OpenMP layer binds to the libgomp torch loaded, so each parallel launch also sets the OpenMP
    thread count torch reads (and not MKL's). It is put back afterwards with torch.set_num_threads, or a
    deployed model would leave torch on a mixed thread setting, and float results of later torch work
    would depend on whether a kernel ran before."""
    torch_threads = torch.get_num_threads()
    wanted = 1 if batch == 1 else (threads or torch_threads)
    # numba sets its config attributes from the environment at import; its stubs do not declare them
    count = max(1, min(wanted, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    numba.set_num_threads(count)
    try:
        yield count
    finally:
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)


def _bias(layer: nn.Module, out: int) -> Tensor:
    """The layer's bias as a contiguous float copy, zeros when it has none (the kernels always add one)."""
    bias = layer_bias(layer)
    return (torch.zeros(out) if bias is None else bias.detach()).float().contiguous().clone()


def _plain_conv(layer: nn.Conv2d) -> tuple[int, int]:
    """(stride, padding) of a conv the kernels support: square, groups 1, dilation 1, zero padding."""
    stride, padding = layer.stride, layer.padding
    if (layer.groups != 1 or layer.dilation != (1, 1) or layer.padding_mode != "zeros" or isinstance(padding, str)
            or stride[0] != stride[1] or padding[0] != padding[1]):
        raise NotDeployable("only square-stride, symmetric zero-padded, ungrouped, undilated convs are supported")
    return stride[0], padding[0]


class KernelModule(nn.Module):
    """Keeps its kernel's arrays as buffers (state_dict, save) and hands numba their numpy views, cached:
    `.numpy()` costs microseconds a call, a tenth of a small layer's whole time at batch 1."""

    def arrays(self, *names: str) -> list[np.ndarray]:
        views = self.__dict__.setdefault("_numpy_views", {})
        out = []
        for name in names:
            tensor = getattr(self, name)
            cached = views.get(name)
            if cached is None or cached[0] is not tensor:  # a buffer replaced (load, .to()) gets a new view
                cached = views[name] = (tensor, tensor.numpy())
            out.append(cached[1])
        return out


class PackedBinaryConv2d(KernelModule):
    """A binary conv or linear layer (any binarization method) on bit-packed activations and weights; see
    binary_kernels."""

    weight_bits: Tensor  # buffers
    scale: Tensor
    bias: Tensor

    def __init__(self, layer: BinaryConv2d | BinaryLinear, threads: int | None = None):
        super().__init__()
        conv = isinstance(layer, BinaryConv2d)
        self.stride, self.padding = _plain_conv(layer) if isinstance(layer, BinaryConv2d) else (1, 0)
        self.linear = not conv
        binarizer = layer.input_binarizer
        if not isinstance(binarizer, ActivationBinarizer):  # nn.Identity: the layer binarizes weights only
            raise NotDeployable("weights-only binarization: the inputs are real-valued, so the layer stays dense")
        with torch.no_grad():
            signs, scale = layer.weight_binarizer.eval()(layer.weight)
        signs = signs.detach().reshape(layer.weight.shape[0], -1, *(layer.weight.shape[2:] if conv else (1, 1)))
        if not bool((signs.abs() == 1).all()):
            raise NotDeployable("some binary weights are 0 (sign of an exactly-zero latent weight, or {0, 1} "
                                "codes); the packed kernel needs +-1 weights")
        out = signs.shape[0]
        scale = torch.ones(out) if scale is None else scale.detach().reshape(-1).expand(out)
        self.input_binarizer = binarizer
        self.kernel = tuple(signs.shape[2:])
        self.register_buffer("weight_bits", torch.from_numpy(binary_kernels.pack_weights(signs.numpy())))
        self.register_buffer("scale", scale.float().contiguous().clone())
        self.register_buffer("bias", _bias(layer, out))
        self.threads = threads

    def fold(self, k: Tensor, c: Tensor) -> None:
        """Fold a per-channel affine map y -> y * k + c (an eval-mode BatchNorm) into the output scale."""
        self.scale.mul_(k)
        self.bias.mul_(k).add_(c)

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_binarizer.normalized(x)  # on the layer's own input shape, as the training graph does
        if getattr(self.input_binarizer, "zero", "zero") == "positive":  # sign(0) = +1: no value may pack as 0
            x = sign(x, "positive")
        lead = x.shape[:-1]
        if self.linear:  # any rank whose last dimension is the features: one 1x1 "image" per row
            x = x.reshape(-1, x.shape[-1], 1, 1)
        x = x.detach().float().contiguous()
        kh, kw = self.kernel
        out_h = (x.shape[2] + 2 * self.padding - kh) // self.stride + 1
        out_w = (x.shape[3] + 2 * self.padding - kw) // self.stride + 1
        weight_bits, scale, bias = self.arrays("weight_bits", "scale", "bias")
        with kernel_threads(x.shape[0], self.threads) as threads:
            nonzero, positive = binary_kernels.pack_rows(x.numpy(), kw, self.stride, self.padding, out_w, threads)
            out = binary_kernels.binary_conv(nonzero, positive, weight_bits, scale, bias, self.stride, self.padding,
                                             out_h, threads)
        y = torch.from_numpy(out)
        return y.reshape(*lead, -1) if self.linear else y


class _ChannelMajorConv(KernelModule):
    """Shared by the sparse and pattern convs: pad, lay the input out channel-major over all images
    (C, B*Hp*Wp), run the stride-1 kernel, subsample a strided conv (stride^2 more multiply-adds, which the
    deploy step weighs against dense by timing)."""

    stride: int
    padding: int
    threads: int | None

    def kernel_call(self, planes: np.ndarray, batch: int, hp: int, wp: int, segment: int) -> np.ndarray:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        p = self.padding
        batch, channels, height, width = x.shape
        hp, wp = height + 2 * p, width + 2 * p
        with kernel_threads(batch, self.threads):
            planes = sparse_kernels.channel_major(x.detach().float().contiguous().numpy(), p)
            y = torch.from_numpy(self.kernel_call(planes, batch, hp, wp, sparse_kernels.segment_length(channels)))
        return y if self.stride == 1 else y[:, :, ::self.stride, ::self.stride].contiguous()


class SparseConv2d(_ChannelMajorConv):
    """A pruned conv that multiplies only its non-zero weights; see sparse_kernels."""

    def __init__(self, layer: nn.Conv2d, threads: int | None = None):
        super().__init__()
        self.stride, self.padding = _plain_conv(layer)
        weight = layer.weight.detach().float().numpy()
        ptr, chan, position, values = conv_by_output(weight)
        for name, value in (("ptr", ptr), ("chan", chan), ("position", position), ("values", values)):
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value)))
        self.register_buffer("bias", _bias(layer, weight.shape[0]))
        self.kernel = tuple(weight.shape[2:])
        self.threads = threads

    def kernel_call(self, planes: np.ndarray, batch: int, hp: int, wp: int, segment: int) -> np.ndarray:
        kh, kw = self.kernel
        ptr, chan, position, values, bias = self.arrays("ptr", "chan", "position", "values", "bias")
        return sparse_kernels.sparse_conv(planes, ptr, chan, position, values, bias, kw, batch, hp, wp,
                                          hp - kh + 1, wp - kw + 1, segment)


class PatternConv2d(_ChannelMajorConv):
    """A pattern + connectivity pruned 3x3 conv; see pattern_kernels. Filters that share their kernels and
    patterns in groups (pruned with filter_group > 1) run as per-group dense GEMMs over gathered inputs;
    otherwise (PatDNN's per-filter connectivity) in FKW storage, one 4-tap pass per kernel."""

    def __init__(self, layer: nn.Conv2d, threads: int | None = None):
        super().__init__()
        self.stride, self.padding = _plain_conv(layer)
        if layer.kernel_size != (3, 3):
            raise NotDeployable("pattern kernels are 3x3")
        weight = layer.weight.detach().float().numpy()
        try:
            groups = pattern_kernels.group_filters(weight)
        except ValueError as exc:
            raise NotDeployable(str(exc)) from None
        self.grouped = groups.mean_filters >= pattern_kernels.MIN_GROUP
        self.kind = "pattern, filter groups" if self.grouped else "pattern"
        arrays = ({f"group_{n}": getattr(groups, n) for n in GROUP_ARRAYS} if self.grouped else
                  {f"fkw_{n}": getattr(pattern_kernels.fkw_encode(weight), n) for n in FKW_ARRAYS})
        for name, value in arrays.items():
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value)))
        self.register_buffer("bias", _bias(layer, layer.out_channels))
        self.threads = threads

    def kernel_call(self, planes: np.ndarray, batch: int, hp: int, wp: int, segment: int) -> np.ndarray:
        if self.grouped:
            slots, group_ptr, row_ptr, chan, tap, weights, bias = self.arrays(*(f"group_{n}" for n in GROUP_ARRAYS),
                                                                              "bias")
            return pattern_kernels.grouped_conv(planes, slots, group_ptr, row_ptr, chan, tap, weights, bias, batch,
                                                hp, wp, hp - 2, wp - 2, segment)
        reorder, offset, index, stride, weights, patterns, bias = self.arrays(*(f"fkw_{n}" for n in FKW_ARRAYS),
                                                                              "bias")
        return pattern_kernels.pattern_conv(planes, reorder, offset, index, stride, weights, patterns, bias, batch,
                                            hp, wp, hp - 2, wp - 2, segment)

    def extra_repr(self) -> str:
        return f"{self.kind}, stride={self.stride}, padding={self.padding}"


class SparseLinear(KernelModule):
    """A pruned linear layer as a CSR product."""

    def __init__(self, layer: nn.Module, threads: int | None = None):
        super().__init__()
        weight = canonical_weight(layer).detach().float()  # (out, in), also for HF's (in, out) Conv1D
        ptr, cols, values = linear_by_output_row(weight.numpy())
        for name, value in (("ptr", ptr), ("cols", cols), ("values", values)):
            self.register_buffer(name, torch.from_numpy(np.ascontiguousarray(value)))
        self.register_buffer("bias", _bias(layer, weight.shape[0]))
        self.threads = threads

    def forward(self, x: Tensor) -> Tensor:
        """Inputs of any rank whose last dimension is the features, as nn.Linear takes them."""
        rows = x.reshape(-1, x.shape[-1])
        ptr, cols, values, bias = self.arrays("ptr", "cols", "values", "bias")
        with kernel_threads(rows.shape[0], self.threads) as threads:
            yt = sparse_kernels.sparse_linear(rows.detach().float().t().contiguous().numpy(), ptr, cols, values, bias,
                                              threads)
        return torch.from_numpy(yt).t().reshape(*x.shape[:-1], -1)
