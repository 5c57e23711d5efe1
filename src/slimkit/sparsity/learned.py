"""Masks from learned scores: OptG and hard movement pruning.

Both keep a score tensor S beside each weight, start it at 0, and train it with the straight-through
estimator dL/dS = W * G (see `ScoredMask`), so S accumulates the first-order Taylor criterion -w*g for kept
and pruned weights alike and a pruned weight can come back. They differ in the schedule and the ranking:
OptG ranks globally once per epoch at p * sigmoid(beta (e - E/2)) and trains the scores at the learning
rate times the same sigmoid; movement pruning ranks per layer under the cubic schedule.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field
from torch import Tensor, nn

from slimkit.methods import register_method
from slimkit.sparsity.masks import ScoredMask, raw_weight
from slimkit.sparsity.pruner import GradualConfig, PruneConfig, Pruner
from slimkit.train.modifier import TrainContext


class OptgConfig(PruneConfig):
    """OptG: supermask scores, one global ranking per epoch, sigmoid sparsity and score-LR schedule.

    p_e = p * sigmoid(beta (e - E/2)); S <- S - lr_e sigmoid(beta (e - E/2)) (W * G). Supermask training sums the
    gradient criterion -w*g over kept and pruned weights, so the ranking sees how weights interact.

    References:
        Zhang, Lin, Chen, Chao & Ji, "OptG: Optimizing Gradient-driven Criteria in Network Sparsity",
        arXiv:2201.12826.
    """

    method: Literal["optg"] = "optg"
    beta: float = Field(1.0, gt=0, description="steepness of the sigmoid schedule (the paper's configs use 1)")
    mask_update: Literal["epoch", "step"] = Field(
        "epoch", description="'epoch' as the official code; 'step' re-ranks after every step (a deviation)")


class MovementConfig(GradualConfig):
    """Hard movement pruning: per-layer top-k of learned scores, cubic schedule.

    S <- S - lr (W * G) (straight-through), keep the top-k of S: weights that move away from zero during
    fine-tuning are kept, whatever their magnitude, which suits pretrained models.

    References:
        Sanh, Wolf & Rush, "Movement Pruning: Adaptive Sparsity by Fine-Tuning", NeurIPS 2020, arXiv:2005.07683.
    """

    method: Literal["movement"] = "movement"
    scope: Literal["global", "layer"] = "layer"
    score_lr_scale: float = Field(1.0, gt=0, description="score learning rate as a multiple of the weights' one")


def optg_sparsity(epoch: int, epochs: int, sparsity: float, beta: float = 1.0) -> float:
    """p_e = p * sigmoid(beta * (e - E/2)), the OptG sparsity of epoch e of E."""
    return sparsity * sigmoid(beta * (epoch - epochs / 2))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class LearnedScorePruner(Pruner):
    """Shared by OptG and movement: scored masks, scores in their own group without weight decay, and a
    ranking that may revive weights. Score gradients are DDP-averaged already; the scores are averaged once
    more before each top-k, so every rank provably keeps the same mask."""

    scored_masks = True
    monotone = False
    gradient_scores = True

    def __init__(self, config: PruneConfig):
        super().__init__(config)
        self.lr_scale = 1.0

    def scores(self) -> dict[str, Tensor]:
        return {n: mask.scores for n, (_, mask) in self.masks.items()}

    def tiebreak(self) -> dict[str, Tensor]:
        """Equal scores (all of them before the scores have trained) go to the larger |w|."""
        return {n: raw_weight(m).detach().abs() for n, (m, _) in self.masks.items()}

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        scores = [mask.scores for _, mask in self.masks.values() if isinstance(mask, ScoredMask)]
        return [{"params": scores, "weight_decay": 0.0, "lr_scale": self.lr_scale, "name": self.name}]

    def set_lr_scale(self, scale: float, ctx: TrainContext) -> None:
        self.lr_scale = scale
        for group in ctx.optimizer.param_groups if ctx.optimizer is not None else []:
            if group.get("name") == self.name:
                group["lr_scale"] = scale


@register_method(MovementConfig)
class MovementPruner(LearnedScorePruner):
    config: MovementConfig
    gradual = True

    def __init__(self, config: MovementConfig):
        super().__init__(config)
        self.lr_scale = config.score_lr_scale


@register_method(OptgConfig)
class OptgPruner(LearnedScorePruner):
    """OptG as zyxxmu/OptG's code runs it. Deviations: ties at the threshold go to the larger |w|, so exactly
    keep weights survive (the code keeps every tie, and prunes nothing while all scores are still 0);
    `mask_update: step` re-ranks every step."""

    config: OptgConfig
    epochs = 0

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        super().attach(model, ctx)
        self.end_epoch = self.config.end_epoch if self.config.end_epoch is not None else ctx.epochs
        self.epochs = ctx.epochs
        self.lr_scale = self._sigmoid(0)

    def _sigmoid(self, epoch: int) -> float:
        """sigmoid(beta (e - E/2)) with e counted from start_epoch over the window E."""
        window = self.end_epoch - self.config.start_epoch
        return optg_sparsity(epoch - self.config.start_epoch, window, 1.0, self.config.beta)

    def epoch_target(self, epoch: int) -> float:
        """p_e inside the window; p itself once the window has passed."""
        return self.config.sparsity * (self._sigmoid(epoch) if epoch < self.end_epoch else 1.0)

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        self.set_lr_scale(self._sigmoid(epoch) if epoch < self.end_epoch else 1.0, ctx)
        if epoch >= self.config.start_epoch:
            self.prune_to(self.epoch_target(epoch))

    def on_step_end(self, step: int, ctx: TrainContext) -> None:
        if self.config.mask_update == "step" and ctx.epoch >= self.config.start_epoch:
            self.prune_to(self.current)

    def is_complete(self, epoch: int) -> bool:
        """At p, or in the last epoch of training (whose scores finalize ranks at p, as the paper evaluates)."""
        return self.current >= self.config.sparsity or epoch >= self.epochs - 1

    def summary(self) -> dict[str, Any]:
        return super().summary() | {"beta": self.config.beta, "mask_update": self.config.mask_update}
