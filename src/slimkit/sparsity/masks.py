"""Weight masks as parametrizations: `module.weight` reads W * M while the trained W stays intact beside M.

The mask is a buffer, so it travels in state_dict and checkpoints; `remove_masks` squashes it into W.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.layers import layer_tensor, parametrization_chain
from slimkit.parametrized import add_parametrization, remove_parametrization


class WeightMask(nn.Module):
    """Multiplies a tensor by a fixed boolean mask; the mask changes only when a pruner sets it."""

    mask: Tensor

    def __init__(self, shape: torch.Size):
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, dtype=torch.bool))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask


class ScoredMask(WeightMask):
    """A mask picked from trainable scores S beside the weight (OptG, movement pruning).

    The forward value is W * M; a straight-through estimator passes the output gradient G to the scores as if
    M were S, so dL/dS = W * G for kept and pruned entries alike, and dL/dW = G * M.
    """

    def __init__(self, shape: torch.Size):
        super().__init__(shape)
        self.scores = nn.Parameter(torch.zeros(shape))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * (self.mask + (self.scores - self.scores.detach()))


def add_mask(module: nn.Module, name: str = "weight", scored: bool = False) -> WeightMask:
    """Attach (or return the existing) mask of `module.name`; `scored` gives it trainable scores."""
    existing = get_mask(module, name)
    if existing is not None:
        if scored and not isinstance(existing, ScoredMask):
            raise ValueError(f"{type(module).__name__}.{name} already has a plain mask; two pruners overlap")
        return existing
    weight = layer_tensor(module, name)
    with torch.device(weight.device):  # the mask (and scores) beside the weight, on a GPU too
        mask = (ScoredMask if scored else WeightMask)(weight.shape)
    add_parametrization(module, name, mask)
    return mask


def get_mask(module: nn.Module, name: str = "weight") -> WeightMask | None:
    chain = parametrization_chain(module, name)
    if chain is None:
        return None
    return next((p for p in chain if isinstance(p, WeightMask)), None)


def raw_weight(module: nn.Module, name: str = "weight") -> Tensor:
    """The trained tensor under any parametrizations (what the optimiser updates)."""
    chain = parametrization_chain(module, name)
    return chain.original if chain is not None else layer_tensor(module, name)


def masked_layers(model: nn.Module) -> dict[str, tuple[nn.Module, WeightMask]]:
    return {n: (m, mask) for n, m in model.named_modules() if (mask := get_mask(m)) is not None}


def remove_mask(module: nn.Module, name: str = "weight") -> None:
    """Bake the mask into the weight (W <- W * M) and drop it. Other parametrizations on the same weight (a
    quantizer, say) stay and now act on the masked weight."""
    chain = parametrization_chain(module, name)
    mask = get_mask(module, name)
    if chain is None or mask is None:
        raise SlimkitError(f"{type(module).__name__}.{name} has no mask to remove")
    if len(chain) == 1:
        remove_parametrization(module, name)
        return
    index = next(i for i, p in enumerate(chain) if p is mask)
    with torch.no_grad():
        chain.original.mul_(mask.mask)
    del chain[index]


def remove_masks(model: nn.Module) -> nn.Module:
    for module, _ in masked_layers(model).values():
        remove_mask(module)
    return model
