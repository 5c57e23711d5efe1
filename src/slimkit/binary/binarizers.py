"""Binarizers: what turns a latent weight or an activation into signs, per method (papers cited on the
method configs in `slimkit.binary.modifiers`).

A weight binarizer maps the latent weight W to (signs, scale): signs hold the binary values (+1/-1, or
{0, 1} for SiMaN's paper form) and scale is a per-output-channel factor applied to the layer output, or
None. Keeping the scale outside the signs lets the training graph and a bit-packed kernel compute the
same integer sums. Statistics are unbiased (torch's default), as in the reference code.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from slimkit.binary.functions import ClippedSTE, Ede, RbnnSign, Surrogate, Zero, surrogate_sign

Normalize = Literal["none", "standardize", "scale", "standardize_eps"]


def _per_row(x: Tensor) -> Tensor:
    """View (N, ...) as (N, rest): per output channel for weights, per sample for activations."""
    return x.reshape(x.shape[0], -1)


def _broadcast(stat: Tensor, like: Tensor) -> Tensor:
    return stat.reshape(stat.shape[0], *([1] * (like.ndim - 1)))


def standardize_rows(x: Tensor, eps: float | None = None) -> Tensor:
    """(x - mean) / std per row; with eps, / sqrt(var + eps) instead (no eps: RBNN, IR-Net)."""
    rows = _per_row(x)
    centred = x - _broadcast(rows.mean(1), x)
    spread = rows.std(1) if eps is None else (rows.var(1) + eps).sqrt()
    return centred / _broadcast(spread, x)


class ActivationBinarizer(nn.Module):
    """sign(normalize(x)) with a surrogate gradient. The normalisations never change the sign except
    through centring, but they set where the surrogate's window sits.

    `zero` is the sign of 0: "zero" (the papers' code: sign(0) = 0, deployed exactly with two bit planes,
    non-zero and positive) or "positive" (Larq's sign(0) = +1: every binarized value is +-1, so deployment
    needs one plane except in windows that reach the zero padding)."""

    def __init__(self, surrogate: Surrogate, normalize: Normalize = "none", zero: Zero = "zero"):
        super().__init__()
        self.surrogate = surrogate
        self.normalize = normalize
        self.zero = zero

    @property
    def signs_input_in_eval(self) -> bool:
        """Whether eval mode takes the sign of x itself (no per-sample standardisation), so a deployed layer
        can read the sign bits the layer before it wrote."""
        return self.normalize in ("none", "scale")

    def normalized(self, x: Tensor) -> Tensor:
        """The tensor whose sign is taken (deployment packs the signs of this)."""
        if self.normalize == "standardize":  # RBNN: per-sample, no eps
            return standardize_rows(x)
        if self.normalize == "standardize_eps":  # SiMaN
            return standardize_rows(x, eps=1e-5)
        if self.normalize == "scale" and self.training:  # ReCU: no centring, training only
            return x / _broadcast((_per_row(x).var(1) + 1e-5).sqrt(), x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return surrogate_sign(self.normalized(x), self.surrogate, self.zero)

    def extra_repr(self) -> str:
        return f"surrogate={self.surrogate}, normalize={self.normalize}, zero={self.zero}"


class WeightBinarizer(nn.Module):
    """Base: forward(W) -> (signs, per-output-channel scale or None)."""

    def forward(self, weight: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError


class XnorWeight(WeightBinarizer):
    """XNOR-Net: signs of W (STE clipped at 1) times alpha_c = mean |W_c|, which carries gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.surrogate = ClippedSTE(1.0)

    def forward(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        return surrogate_sign(weight, self.surrogate), _per_row(weight).abs().mean(1)


class IrNetWeight(WeightBinarizer):
    """IR-Net: standardise per channel, EDE sign, scale 2^round(log2 mean|What_c|) (no gradient)."""

    def __init__(self, surrogate: Ede):
        super().__init__()
        self.surrogate = surrogate

    def forward(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        w_hat = standardize_rows(weight)
        scale = torch.pow(2.0, torch.round(torch.log2(_per_row(w_hat).abs().mean(1)))).detach()
        return surrogate_sign(w_hat, self.surrogate), scale


def get_ab(n: int) -> tuple[int, int]:
    """RBNN's reshape factors: a = the largest divisor of n not above floor(sqrt n), b = n / a."""
    for a in range(math.isqrt(n), 0, -1):
        if n % a == 0:
            return a, n // a
    raise ValueError(f"no factors for {n}")


def random_orthogonal(n: int, generator: torch.Generator | None = None) -> Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian with the sign of R's diagonal folded in)."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


class RbnnWeight(WeightBinarizer):
    """RBNN: rotate the standardised weight by one pair (R1, R2) per layer, blended by |sin theta|.

    At the first training batch of a rotation epoch (`rotate_next`), three alternating SVD steps
    maximise sum_i ||R1^T X_i R2||_1. R1/R2 are buffers, theta (from `theta`, pi/2 in the paper's code) and alpha
    parameters.
    """

    R1: Tensor  # buffers
    R2: Tensor

    def __init__(self, weight: Tensor, surrogate: RbnnSign, theta: float = math.pi / 2):
        super().__init__()
        self.surrogate = surrogate
        self.a, self.b = get_ab(weight[0].numel())
        self.register_buffer("R1", random_orthogonal(self.a))
        self.register_buffer("R2", random_orthogonal(self.b))
        shape = (weight.shape[0], *([1] * (weight.ndim - 1)))
        self.theta = nn.Parameter(torch.full(shape, theta))
        self.alpha = nn.Parameter(_per_row(weight).abs().mean(1).detach().clone())
        self.rotate_next = False

    @torch.no_grad()
    def rotate(self, x: Tensor, steps: int = 3) -> list[float]:
        """Alternating updates of R1 and R2 on X (Co, a, b); returns the objective before each step."""
        history = []
        for _ in range(steps):
            v = self.R1.T @ x @ self.R2
            history.append(v.abs().sum().item())
            b = torch.sign(v)
            d1 = (b @ self.R2.T @ x.transpose(1, 2)).sum(0)
            u1, _, v1h = torch.linalg.svd(d1)
            self.R1.copy_(v1h.T @ u1.T)
            d2 = (x.transpose(1, 2) @ self.R1 @ b).sum(0)
            u2, _, v2h = torch.linalg.svd(d2)
            self.R2.copy_(u2 @ v2h)
        history.append((self.R1.T @ x @ self.R2).abs().sum().item())
        return history

    def forward(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        w_hat = standardize_rows(weight)
        x = w_hat.reshape(weight.shape[0], self.a, self.b)
        if self.training and self.rotate_next:
            self.rotate(x.detach())
            self.rotate_next = False
        rotated = (self.R1.T @ x @ self.R2).reshape(weight.shape)
        w_t = w_hat + torch.sin(self.theta).abs() * (rotated.detach() - w_hat)
        return surrogate_sign(w_t, self.surrogate), self.alpha


class RecuWeight(WeightBinarizer):
    """ReCU: standardise to Laplace scale 2, clamp at the tau-quantile Q, sign with an identity STE."""

    tau: Tensor  # a buffer

    def __init__(self, weight: Tensor):
        super().__init__()
        self.alpha = nn.Parameter(torch.rand(weight.shape[0]))
        self.register_buffer("tau", torch.tensor(1.0))
        self.surrogate = ClippedSTE(None)

    def clamp_bound(self, w_hat: Tensor) -> Tensor:
        """Q = -E|What| ln(2 - 2 tau): the tau-quantile of a Laplace of that mean; tau = 1 means no clamp."""
        with torch.no_grad():
            return -w_hat.abs().mean() * torch.log(2 - 2 * self.tau)

    def forward(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        w_hat = standardize_rows(weight, eps=1e-5) * (2 * math.sqrt(2))
        q = self.clamp_bound(w_hat)
        return surrogate_sign(torch.clamp(w_hat, -q, q), self.surrogate), self.alpha


class _ForwardValue(torch.autograd.Function):
    """Forward: `value` exactly; backward: the gradient passes to `x` unchanged (SiMaN's STE through |.|)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, value: Tensor) -> Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        return grad_output, None


class SimanWeight(WeightBinarizer):
    """SiMaN: project latent weights into [L, H] percentiles, then code each channel's upper half of |What|
    as +1 and the rest as -1 (or {1, 0} in the paper's form). B is stored and reused in eval."""

    B: Tensor  # buffers
    percent: Tensor

    def __init__(self, weight: Tensor, values: Literal["pm1", "01"] = "pm1"):
        super().__init__()
        self.values = values
        self.alpha = nn.Parameter(_per_row(weight).abs().mean(1).detach().clone())
        self.register_buffer("B", (torch.sign(_per_row(weight.detach())) + 1) / 2)
        self.register_buffer("percent", torch.tensor(0.0))

    @torch.no_grad()
    def project(self, weight: Tensor) -> None:
        """W <- sign(W1) clamp(|W1|, L, H), W1 = W - channel mean, L/H the p-th and (100-p)-th percentiles."""
        centred = weight - _broadcast(_per_row(weight).mean(1), weight)
        magnitude = centred.abs().reshape(-1)
        p = float(self.percent) / 100
        low, high = torch.quantile(magnitude, torch.tensor([p, 1 - p], dtype=magnitude.dtype, device=magnitude.device))
        weight.copy_(torch.sign(centred) * centred.abs().clamp(low, high))

    def forward(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        if self.training:  # eval outputs depend on B alone, so eval never touches the weights
            self.project(weight)
        x = _per_row(standardize_rows(weight, eps=1e-5)).abs()
        if self.training:
            with torch.no_grad():
                self.B.copy_((x > x.median(dim=1, keepdim=True).values).to(x.dtype))
        value = 2 * self.B - 1 if self.values == "pm1" else self.B
        return _ForwardValue.apply(x, value).reshape(weight.shape), self.alpha
