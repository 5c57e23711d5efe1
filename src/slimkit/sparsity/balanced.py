"""Sense-style balanced sparsity: every group keeps exactly floor((1 - s) * |group|) weights. A group is one
output filter times a tile of T input channels over all kernel positions (`balance: group`, the spec's
reconstruction), or a single kernel, one filter times one input channel (`balance: kernel`, the paper's
abstract: "the sparsity ratio of each kernel at 1/2"). On a systolic array that gives each PE one kernel
(slimkit.hardware.systolic), group balance equalises the work of each PE *column* only: the PEs of a column
can hold anywhere from 0 to k weights, and in lockstep the fullest one sets the pace. Kernel balance gives
every PE the same number of weights. Sense's own setting is s = 1/2.

No code of the paper exists, so the training is reconstructed from its description: start from trained
weights, raise s linearly to its target while retraining with the masks applied, and (optionally) rearrange
input channels first so that each tile holds channels of similar activation sparsity (`rearrange.py`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from slimkit.layers import canonical_weight, select_layers
from slimkit.methods import register_method
from slimkit.sparsity.pruner import GradualConfig, PruneModifier
from slimkit.sparsity.rearrange import rearrange_channels
from slimkit.train.modifier import TrainContext


class SenseConfig(GradualConfig):
    """Balanced groups: one filter x `tile` input channels (`balance: group`) or one kernel (`balance:
    kernel`); sparsity rises linearly over the window.

    Each group g keeps its floor((1 - s) |g|) largest |w|: with group balance every PE column of a systolic
    array gets equal work, with kernel balance every PE does.

    References:
        Sun et al., "Sense: Model Hardware Co-design for Accelerating Sparse CNN on Systolic Array",
        arXiv:2202.00389.
    """

    method: Literal["sense"] = "sense"
    sparsity: float = Field(0.5, ge=0, lt=1, description="fraction removed from every group")
    balance: Literal["group", "kernel"] = Field(
        "group", description="group: one filter x `tile` input channels; kernel: one filter x one input channel "
                             "(every kernel keeps floor((1 - s) k) of its k weights)")
    tile: int = Field(8, ge=1, description="input channels per group (the PE array height); balance: group only")
    rearrange: bool = Field(True, description="sort input channels by measured zero fraction before pruning")
    calibration_batches: int = Field(4, ge=1)

    blocks_supported = False  # groups are balanced by count, not by whole blocks

    @model_validator(mode="after")
    def _tile_with_groups(self) -> SenseConfig:
        # the default passes: a saved recipe writes every key, and the unused default means nothing
        if self.balance == "kernel" and self.tile != type(self).model_fields["tile"].default:
            raise ValueError(f"'tile': groups of {self.tile} channels apply to balance: group; balance: kernel "
                             f"balances each kernel (one input channel), so leave 'tile' out")
        return self

    @property
    def group_channels(self) -> int:
        """Input channels per balanced group: `tile`, or 1 when each kernel is its own group."""
        return 1 if self.balance == "kernel" else self.tile


def group_keep(size: int, sparsity: float) -> int:
    """Weights a group of `size` keeps: floor((1 - s) * size), with a guard against 0.5 * 18 = 8.9999."""
    return math.floor((1 - sparsity) * size + 1e-9)


def _tiles(inputs: int, tile: int) -> list[slice]:
    return [slice(start, min(start + tile, inputs)) for start in range(0, inputs, tile)]


def balanced_mask(scores: Tensor, tile: int, sparsity: float) -> Tensor:
    """Boolean mask keeping the top group_keep(|g|) scores of every (filter, input tile) group; ties go to
    the lower index in the group's (channel, kh, kw) order."""
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for part in _tiles(scores.shape[1], tile):
        block = scores[:, part].reshape(scores.shape[0], -1)
        order = torch.sort(block, dim=1, descending=True, stable=True).indices
        keep = group_keep(block.shape[1], sparsity)
        chosen = torch.zeros_like(block, dtype=torch.bool).scatter_(1, order[:, :keep], True)
        mask[:, part] = chosen.reshape(mask[:, part].shape)
    return mask


def group_nonzeros(weight: Tensor, tile: int) -> list[Tensor]:
    """Non-zero count of every group, one tensor (one entry per filter) per input tile."""
    return [(weight[:, part] != 0).reshape(weight.shape[0], -1).sum(1) for part in _tiles(weight.shape[1], tile)]


def is_balanced(weight: Tensor, tile: int, sparsity: float) -> bool:
    """True when no group holds more than group_keep(|g|) non-zeros."""
    return all(bool((count <= group_keep(weight[:1, part].numel(), sparsity)).all())
               for count, part in zip(group_nonzeros(weight, tile), _tiles(weight.shape[1], tile), strict=True))


@register_method(SenseConfig)
class SenseModifier(PruneModifier[SenseConfig]):
    gradual = True

    def __init__(self, config: SenseConfig):
        super().__init__(config)
        self.permutations: dict[str, list[int]] = {}
        self.rearranged = False

    def schedule(self, progress: float) -> float:
        return self.config.initial_sparsity + (self.config.sparsity - self.config.initial_sparsity) * progress

    def check(self, model: nn.Module) -> list[str]:
        issues = super().check(model)
        if issues or self.config.balance != "kernel":
            return issues
        sparsity = self.config.sparsity
        for name, module in select_layers(model, self.config.layers).items():
            kernel = math.prod(canonical_weight(module).shape[2:])  # 1 for a linear layer
            if group_keep(kernel, sparsity) == 0:
                issues.append(f"layer {name!r}: balance: kernel keeps floor((1 - s) k) of each kernel's k weights, "
                              f"and its kernels of {kernel} weight{'s' if kernel > 1 else ''} keep none at s = "
                              f"{sparsity:g}; exclude it (layers.exclude) or use balance: group")
        return issues

    def select(self, scores: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
        return {name: balanced_mask(s, self.config.group_channels, sparsity) for name, s in scores.items()}

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        if self.config.rearrange and not self.rearranged and epoch >= self.config.start_epoch:
            self.rearrange(ctx)
        super().on_epoch_start(epoch, ctx)

    def rearrange(self, ctx: TrainContext) -> None:
        batches = ctx.input_tensors(self.config.calibration_batches, f"{self.name} channel rearrangement")
        self.permutations = rearrange_channels(ctx.model, batches, list(self.masks), ctx.optimizer)
        self.rearranged = True

    def summary(self) -> dict[str, Any]:
        return super().summary() | {"balance": self.config.balance, "tile": self.config.group_channels,
                                    "rearranged_layers": sorted(self.permutations)}

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"rearranged": self.rearranged, "permutations": self.permutations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.rearranged = bool(state.get("rearranged", False))
        self.permutations = dict(state.get("permutations", {}))
