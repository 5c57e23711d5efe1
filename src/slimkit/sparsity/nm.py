"""N:M sparsity (at most N non-zeros in every M consecutive weights), any N < M.

Groups run along the input dimension: for a linear layer along its inputs, for a conv along the input
channels at each kernel position, which is the layout sparse tensor cores and N:M kernels consume. When the
input size is not a multiple of M, the trailing partial group keeps at most N as well.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from slimkit.layers import LayerSelection, known_adapter
from slimkit.methods import register_method
from slimkit.sparsity.pruner import MaskConfig, PruneModifier
from slimkit.sparsity.schedules import cubic_sparsity


class NMConfig(MaskConfig):
    """Keep the n largest |w| of every m along the input dimension; gradual when end_epoch is set.

    mask_g = top-n |w| within each group g of m consecutive inputs (sparsity 1 - n/m). 2:4 is the pattern sparse
    tensor cores run at twice the dense rate. Masks come from magnitude; SR-STE is not implemented.

    References:
        Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch", ICLR 2021,
        arXiv:2102.04010.
        Mishra et al., "Accelerating Sparse Deep Neural Networks", arXiv:2104.08378.
    """

    kind = "prune"
    method: Literal["nm"] = "nm"
    n: int = Field(2, ge=1)
    m: int = Field(4, ge=2)
    layers: LayerSelection = Field(default_factory=LayerSelection)
    updates_per_epoch: int = Field(4, ge=1)

    @property
    def mask_updates_per_epoch(self) -> int:
        return self.updates_per_epoch

    @model_validator(mode="after")
    def _n_below_m(self) -> NMConfig:
        if self.n >= self.m:
            raise ValueError(f"n must be below m, got n={self.n}, m={self.m}")
        return self


def input_rows(weight: Tensor) -> Tensor:
    """(rows, inputs): conv weights (out, in, kh, kw) become (out * kh * kw, in)."""
    if weight.dim() == 4:
        return weight.permute(0, 2, 3, 1).reshape(-1, weight.shape[1])
    return weight.reshape(weight.shape[0], -1)


def _from_input_rows(flat: Tensor, like: Tensor) -> Tensor:
    if like.dim() == 4:
        out, inp, kh, kw = like.shape
        return flat.reshape(out, kh, kw, inp).permute(0, 3, 1, 2).contiguous()
    return flat.reshape(like.shape)


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Boolean mask keeping the n highest scores of every m consecutive inputs (ties: lower index)."""
    rows = input_rows(scores.float())
    inputs = rows.shape[1]
    padded = -(-inputs // m) * m
    full = torch.full((rows.shape[0], padded), float("-inf"), device=rows.device)
    full[:, :inputs] = rows
    order = torch.sort(full.reshape(-1, m), dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(order, dtype=torch.bool).scatter_(1, order[:, :n], True)
    return _from_input_rows(keep.reshape(rows.shape[0], padded)[:, :inputs], scores)


def is_nm(weight: Tensor, n: int, m: int) -> bool:
    """True when no group of m consecutive inputs holds more than n non-zeros."""
    rows = (input_rows(weight) != 0).float()
    inputs = rows.shape[1]
    padded = torch.zeros(rows.shape[0], -(-inputs // m) * m, device=rows.device)
    padded[:, :inputs] = rows
    return bool((padded.reshape(-1, m).sum(1) <= n).all())


@register_method(NMConfig)
class NMModifier(PruneModifier[NMConfig]):
    """One-shot at start_epoch, or, with end_epoch, kept-per-group stepping down from m to n (cubic)."""


    def __init__(self, config: NMConfig):
        super().__init__(config)
        self.gradual = config.end_epoch is not None

    @property
    def final(self) -> float:
        return 1 - self.config.n / self.config.m

    def schedule(self, progress: float) -> float:
        return cubic_sparsity(progress, 0.0, self.final)

    def kept_per_group(self, sparsity: float) -> int:
        return max(self.config.n, self.config.m - round(sparsity * self.config.m))

    def select(self, scores: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
        kept = self.kept_per_group(sparsity)
        out = {}
        for name, s in scores.items():
            adapter = known_adapter(self.masks[name][0])  # groups run along inputs, whatever the storage
            out[name] = adapter.stored(nm_mask(adapter.canonical(s), kept, self.config.m))
        return out

    def summary(self) -> dict[str, Any]:
        return {"method": self.name, "n": self.config.n, "m": self.config.m, "target_sparsity": self.final,
                "layers": list(self.masks)}
