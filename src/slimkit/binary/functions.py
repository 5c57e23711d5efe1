"""sign() with a surrogate gradient. One autograd.Function; the backward shapes are the papers' own.

Forward is torch.sign (so sign(0) = 0, as in every reference implementation), or with `zero="positive"`
sign(0) = +1 as Larq takes it, which deploys with one bit plane (see ActivationBinarizer). Backward
multiplies the incoming gradient by `surrogate.grad(x)`:

- ClippedSTE: 1{|x| <= clip} (XNOR-Net, BNN), or identity when clip is None (ReCU's weights).
- ApproxSign: max(0, 2 - 2|x|) (Bi-Real; ReCU and SiMaN activations).
- RbnnSign: max(0, k (sqrt2 t - t^2 |x|)) (RBNN, with its t/k schedule).
- Ede: k t (1 - tanh^2(t x)) (IR-Net's error decay estimator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor


class Surrogate(Protocol):
    def grad(self, x: Tensor) -> Tensor: ...


@dataclass
class ClippedSTE:
    clip: float | None = 1.0

    def grad(self, x: Tensor) -> Tensor:
        return torch.ones_like(x) if self.clip is None else (x.abs() <= self.clip).to(x.dtype)


@dataclass
class ApproxSign:
    def grad(self, x: Tensor) -> Tensor:
        return (2 - 2 * x.abs()).clamp_min(0)


@dataclass
class RbnnSign:
    t: float = 1.0
    k: float = 1.0

    def grad(self, x: Tensor) -> Tensor:
        return (self.k * (math.sqrt(2) * self.t - self.t**2 * x.abs())).clamp_min(0)


@dataclass
class Ede:
    t: float = 1.0
    k: float = 1.0

    def grad(self, x: Tensor) -> Tensor:
        return self.k * self.t * (1 - torch.tanh(self.t * x) ** 2)


Zero = Literal["zero", "positive"]


def sign(x: Tensor, zero: Zero = "zero") -> Tensor:
    """torch.sign, or with zero="positive" +1 at 0 (and at -0.0), -1 below."""
    return torch.sign(x) if zero == "zero" else torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class SurrogateSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, surrogate: Surrogate, zero: Zero) -> Tensor:
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return sign(x, zero)

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        return grad_output * ctx.surrogate.grad(x), None, None


def surrogate_sign(x: Tensor, surrogate: Surrogate, zero: Zero = "zero") -> Tensor:
    return SurrogateSign.apply(x, surrogate, zero)


def log_schedule(epoch: int, epochs: int, t_min: float, t_max: float) -> tuple[float, float]:
    """RBNN/IR-Net: t = 10^(log t_min + (log t_max - log t_min) e/E), k = max(1/t, 1)."""
    t = 10 ** (math.log10(t_min) + (math.log10(t_max) - math.log10(t_min)) * epoch / max(epochs, 1))
    return t, max(1 / t, 1.0)
