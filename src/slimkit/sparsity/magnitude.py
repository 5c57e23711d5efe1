"""The unstructured baselines: one-shot magnitude, gradual magnitude (Zhu & Gupta's cubic schedule, by |w|
or by the Taylor criterion |w*g|) and SNIP.

Scores are taken through the mask, so a pruned weight never returns and masks shrink monotonically.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from slimkit.methods import register_method
from slimkit.sparsity.masks import raw_weight
from slimkit.sparsity.pruner import GradualConfig, PruneConfig, PruneModifier
from slimkit.train.modifier import TrainContext


class MagnitudeConfig(PruneConfig):
    """Prune the smallest |w| once, at start_epoch, then train on with the mask fixed."""

    method: Literal["magnitude"] = "magnitude"


class GradualMagnitudeConfig(GradualConfig):
    """Raise sparsity from initial_sparsity to sparsity between start_epoch and end_epoch (cubic).

    s(t) = s_f + (s_i - s_f) (1 - p)^3, p the fraction of the window elapsed, masks re-ranked at every update:
    prune fast while redundancy is high, slowly near the target so training can recover. Each layer is pruned
    to s(t) on its own, as the paper (and TF's model_pruning) does; `scope: global` ranks all layers at once.

    References:
        Zhu & Gupta, "To prune, or not to prune: exploring the efficacy of pruning for model compression",
        arXiv:1710.01878.
    """

    method: Literal["gmp"] = "gmp"
    scope: Literal["global", "layer"] = "layer"
    criterion: Literal["magnitude", "taylor"] = Field(
        "magnitude", description="rank by |w|, or by |w*g| summed over the steps since the last update")


class SnipConfig(PruneConfig):
    """SNIP: rank |g*w| from `batches` batches at start_epoch (before any training by default), prune once.

    s_j = |dL/dc_j| at c = 1 = |g_j w_j| (connection sensitivity), one global top-k: the weights the loss
    depends on are chosen from data, with no pretraining or schedule.

    References:
        Lee, Ajanthan & Torr, "SNIP: Single-shot Network Pruning based on Connection Sensitivity", ICLR 2019,
        arXiv:1810.02340.
    """

    method: Literal["snip"] = "snip"
    batches: int = Field(1, ge=1)


@register_method(MagnitudeConfig)
class MagnitudeModifier(PruneModifier[MagnitudeConfig]):
    """One-shot magnitude pruning."""


@register_method(GradualMagnitudeConfig)
class GradualMagnitudeModifier(PruneModifier[GradualMagnitudeConfig]):
    """Gradual pruning by magnitude or by the first-order Taylor criterion |w*g|.

    The Taylor scores sum |w*g| over the optimiser steps since the last mask update; the gradients are the
    ones DDP already averaged, and the sums are averaged again before the top-k so every rank agrees.
    """

    gradual = True

    def __init__(self, config: GradualMagnitudeConfig):
        super().__init__(config)
        self.taylor = config.criterion == "taylor"
        self.gradient_scores = self.taylor
        self.sums: dict[str, Tensor] = {}

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        super().attach(model, ctx)
        if self.taylor:
            self.sums = {n: torch.zeros_like(raw_weight(m)) for n, (m, _) in self.masks.items()}

    def on_step_end(self, step: int, ctx: TrainContext) -> None:
        if self.taylor:
            with torch.no_grad():
                for name, (module, _) in self.masks.items():
                    weight = raw_weight(module)
                    if weight.grad is not None:
                        self.sums[name] += (weight * weight.grad).abs()
        super().on_step_end(step, ctx)

    def scores(self) -> dict[str, Tensor]:
        if not self.taylor:
            return super().scores()
        if all(not bool(s.any()) for s in self.sums.values()):  # no step yet: measure on one batch
            for name, s in self.batch_taylor_scores(1).items():
                self.sums[name] += s
        return {n: self.sums[n] * mask.mask for n, (_, mask) in self.masks.items()}

    def prune_to(self, sparsity: float) -> None:
        before = self.current
        super().prune_to(sparsity)
        if self.taylor and self.current != before:
            for s in self.sums.values():
                s.zero_()

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | ({"sums": self.sums} if self.taylor else {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.sums.update({name: saved.clone() for name, saved in state.get("sums", {}).items()})


@register_method(SnipConfig)
class SnipModifier(PruneModifier[SnipConfig]):
    """SNIP (Lee et al. 2019): connection sensitivity |dL/dc| at c = 1, i.e. |g*w|, on the weights as they
    are at start_epoch, one global top-k, mask fixed afterwards. The official code also scores biases and
    divides by the sum of scores; biases stay dense here and the division does not change the ranking."""

    gradient_scores = True

    def scores(self) -> dict[str, Tensor]:
        return self.batch_taylor_scores(self.config.batches)
