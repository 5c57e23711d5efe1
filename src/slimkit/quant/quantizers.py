"""Quantizers: learned-step uniform (LSQ) and non-uniform level sets (SP2, APoT) with a learnable clip.

Each is a module mapping a float tensor to its quantized float value (fake quantization), with
straight-through rounding. The forward value of the uniform quantizer in eval mode is computed by
torch.fake_quantize_*, which ONNX export turns into QuantizeLinear/DequantizeLinear pairs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

Observer = Literal["minmax", "percentile", "mse"]
SAMPLES_PER_BATCH = 1 << 16


def activation_sample(x: Tensor) -> list[Tensor]:
    """A random sample of a batch of activations plus its extremes: enough for an observer, bounded memory."""
    flat = x.detach().reshape(-1)
    pick = torch.randint(0, flat.numel(), (min(flat.numel(), SAMPLES_PER_BATCH),), device=flat.device)
    return [flat[pick], flat.min().reshape(1), flat.max().reshape(1)]


def round_ste(x: Tensor) -> Tensor:
    """round(x) forward, identity backward."""
    return (torch.round(x) - x).detach() + x


def grad_scale(x: Tensor, scale: float) -> Tensor:
    """x forward, gradient multiplied by `scale` (LSQ's step-size gradient scaling)."""
    return (x - x * scale).detach() + x * scale


class UniformQuantizer(nn.Module):
    """LSQ (Esser et al., ICLR 2020, arXiv:1902.08153): q = round(clamp(x / s, Qn, Qp)) * s with a learned step s.

    Weights: signed, one step per output channel. Activations: one step per tensor, unsigned when the
    calibration data are non-negative. The step is initialised by an observer on calibration data (or,
    without calibration, by LSQ's 2 mean|x| / sqrt(Qp) on the first batch).
    """

    initialized: Tensor  # buffers: declared here so that their type is known
    signed: Tensor

    def __init__(self, bits: int, channels: int = 1, signed: bool | None = None):
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"uniform quantization takes 2 to 8 bits, not {bits}")
        self.bits, self.channels = bits, channels
        self.step = nn.Parameter(torch.ones(channels))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("signed", torch.tensor(True if signed is None else signed))
        self._auto_sign = signed is None

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if bool(self.signed) else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if bool(self.signed) else 2**self.bits - 1

    def _rows(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1) if self.channels > 1 else x.reshape(1, -1)

    @torch.no_grad()
    def calibrate(self, x: Tensor, observer: Observer = "minmax", percentile: float = 99.99) -> None:
        """Set the step from sample data `x` (weights, or activations gathered over calibration batches)."""
        if self._auto_sign:
            self.signed.fill_(bool(x.min() < 0))
        rows = self._rows(x).abs().float()
        if observer == "minmax":
            bound = rows.amax(1)
        elif observer == "percentile":
            flat = rows if rows.shape[1] <= 1 << 24 else rows[:, torch.randperm(rows.shape[1],
                                                                                   device=rows.device)[: 1 << 24]]
            bound = torch.quantile(flat, percentile / 100, dim=1)
        else:
            bound = self._mse_bound(rows)
        self.step.copy_((bound / self.qmax).clamp_min(1e-8))
        self.initialized.fill_(True)

    def _mse_bound(self, rows: Tensor) -> Tensor:
        """The clip (of 100 candidates up to the max) that minimises the quantization error, per row."""
        top = rows.amax(1, keepdim=True).clamp_min(1e-8)
        best = top.squeeze(1).clone()
        best_err = torch.full_like(best, float("inf"))
        for fraction in torch.linspace(0.2, 1.0, 100, device=rows.device):
            step = top * fraction / self.qmax
            q = torch.clamp(torch.round(rows / step), 0, self.qmax) * step
            err = ((q - rows) ** 2).mean(1)
            better = err < best_err
            best[better], best_err[better] = (top.squeeze(1) * fraction)[better], err[better]
        return best

    def _view(self, t: Tensor, like: Tensor) -> Tensor:
        return t.reshape(-1, *([1] * (like.ndim - 1))) if self.channels > 1 else t.reshape(())

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.initialized):
            if self._auto_sign:
                self.signed.fill_(bool(x.detach().min() < 0))
            with torch.no_grad():
                mean = self._rows(x.detach()).abs().mean(1)
                self.step.copy_((2 * mean / math.sqrt(self.qmax)).clamp_min(1e-8))
            self.initialized.fill_(True)
        if not self.training:  # the exact same values, through ops ONNX export turns into Q/DQ pairs
            step = self.step.detach().float()
            if self.channels > 1:
                zero = torch.zeros(self.channels, dtype=torch.int32, device=step.device)
                return torch.fake_quantize_per_channel_affine(x, step, zero, 0, self.qmin, self.qmax)
            zero = torch.zeros((), dtype=torch.int32, device=step.device)  # scalar, as QLinearAdd requires
            return torch.fake_quantize_per_tensor_affine(x, step.reshape(()), zero, self.qmin, self.qmax)
        per_step = x.numel() / self.channels
        step = grad_scale(self.step, 1.0 / math.sqrt(per_step * self.qmax))
        step = self._view(step, x)
        return round_ste(torch.clamp(x / step, self.qmin, self.qmax)) * step

    def extra_repr(self) -> str:
        return f"bits={self.bits}, channels={self.channels}, signed={bool(self.signed)}"


class LevelQuantizer(nn.Module):
    """Projects x / alpha onto the nearest of a fixed level set (times alpha), straight-through.

    Weights are divided by their standard deviation first (`standardize`), quantized, and multiplied back,
    and use the signed set ±levels; activations use [0, 1]. The gradient reaching alpha through autograd is
    APoT's: q/alpha - x/alpha inside the clip, sign(x) outside.

    Deviation from the APoT code, which feeds (W - mean)/std itself to the conv: scaling back by std and
    not subtracting the mean keeps the layer's output scale in models without BatchNorm, and keeps pruned
    zeros at zero (0 is a level), so APoT composes with pruning.
    """

    levels: Tensor  # a buffer

    def __init__(self, levels: Tensor, signed: bool, alpha: float, standardize: bool):
        super().__init__()
        self.register_buffer("levels", torch.unique(torch.cat([-levels, levels])) if signed else levels)
        self.signed, self.standardize = signed, standardize
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    @torch.no_grad()
    def calibrate(self, x: Tensor) -> None:
        """Set alpha to the clip (of 50 candidates up to max |x|) with the least quantization error. At low bit
        widths the maximum is a poor clip: with SP2's 2-bit levels {0, 1} it would round most weights to 0."""
        top = x.abs().max().clamp_min(1e-8)
        errors = []
        for fraction in torch.linspace(0.05, 1.0, 50, device=x.device):
            self.alpha.fill_(top * fraction)
            errors.append((((self(x) - x) ** 2).mean().item(), fraction.item()))
        self.alpha.fill_(top * min(errors)[1])

    def project(self, v: Tensor) -> Tensor:
        """The nearest level to each entry of v (v already clipped to the level range)."""
        index = torch.argmin((v.unsqueeze(-1) - self.levels).abs(), dim=-1)
        return self.levels[index]

    def forward(self, x: Tensor) -> Tensor:
        spread = x.std() + 1e-12 if self.standardize else None
        if spread is not None:
            x = x / spread
        low = -1.0 if self.signed else 0.0
        v = torch.clamp(x / self.alpha, low, 1.0)
        q = ((self.project(v) - v).detach() + v) * self.alpha
        return q * spread if spread is not None else q

    def extra_repr(self) -> str:
        return f"levels={self.levels.numel()}, signed={self.signed}, standardize={self.standardize}"
