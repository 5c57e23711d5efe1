"""Masks from learned scores: OptG and hard movement pruning.

Both keep a score tensor S beside each weight, start it at 0, and train it with the straight-through
estimator dL/dS = W * G (see `ScoredMask`), so S accumulates the first-order Taylor criterion -w*g for kept
and pruned weights alike and a pruned weight can come back. They differ in the schedule and the ranking:
OptG ranks globally under a sigmoid ramp p * sigmoid(.) and trains the scores at the learning rate times the
same sigmoid; movement pruning ranks per layer under the cubic schedule.
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeVar

from pydantic import Field
from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.methods import register_method
from slimkit.sparsity.masks import ScoredMask, WeightMask, raw_weight
from slimkit.sparsity.pruner import GradualConfig, PruneConfig, PruneModifier
from slimkit.train.modifier import TrainContext

OPTG_WIDTH = 2 * math.log(99) / 100  # the official code's beta = 1 per epoch over its 100-epoch ImageNet runs


class OptgConfig(PruneConfig):
    """OptG: supermask scores, global rankings under a sigmoid sparsity ramp, score learning rate on the same
    sigmoid.

    p(f) = p * sigmoid(2 ln 99 (f - centre) / width), f the fraction of the window [start_epoch, end_epoch]
    elapsed: sparsity stays near 0, rises from 1% to 99% of p over `width` of the window centred at `centre`,
    then holds p for the rest. The scores learn without weight decay at the same factor:
    S <- S - lr sigmoid(...) (W * G). Supermask training sums the gradient criterion -w*g over kept and pruned
    weights, so the ranking sees how weights interact.

    The official code sets p_e = p * sigmoid(beta (e - E/2)) once per epoch e of E (beta = 1, E = 100 for
    ImageNet ResNet-50): centre 1/2 and width 2 ln 99 / (beta E) = 0.092 are that curve in fractions of the
    run, so a short run keeps its shape (dense until ~45%, a ramp ~9% of the run wide, a long tail at p).
    The code re-ranks once per epoch, about 9 times across the ramp; a run of E epochs keeps that cadence with
    `updates_per_epoch` = 100 / E (12 epochs: 8).

    References:
        Zhang, Lin, Chen, Chao & Ji, "OptG: Optimizing Gradient-driven Criteria in Network Sparsity",
        arXiv:2201.12826; code github.com/zyxxmu/OptG (imagenet.py: the sigmoid, set_model, the mask LR).
    """

    method: Literal["optg"] = "optg"
    centre: float = Field(0.5, gt=0, lt=1, description="fraction of the window where sparsity reaches p/2")
    width: float = Field(OPTG_WIDTH, gt=0, le=1,
                         description="fraction of the window over which sparsity rises from 1% to 99% of p")
    updates_per_epoch: int = Field(1, ge=1, description="global re-rankings per epoch (the code: 1)")

    @property
    def mask_updates_per_epoch(self) -> int:
        return self.updates_per_epoch


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


def optg_sparsity(progress: float, sparsity: float, centre: float = 0.5, width: float = OPTG_WIDTH) -> float:
    """p * sigmoid(2 ln 99 (f - centre) / width): OptG's sparsity at fraction f of its window."""
    return sparsity * sigmoid(2 * math.log(99) * (progress - centre) / width)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _scored(mask: WeightMask, layer: str) -> ScoredMask:
    """A learned-score method's mask, which `attach` made a ScoredMask."""
    if not isinstance(mask, ScoredMask):
        raise SlimkitError(f"{layer} has a plain mask, not the scored mask a learned-score method trains")
    return mask


LearnedConfigT = TypeVar("LearnedConfigT", bound=PruneConfig)


class LearnedScoreModifier(PruneModifier[LearnedConfigT]):
    """Shared by OptG and movement: scored masks, scores in their own group without weight decay, and a
    ranking that may revive weights. Score gradients are DDP-averaged already; the scores are averaged once
    more before each top-k, so every rank provably keeps the same mask."""

    scored_masks = True
    monotone = False
    gradient_scores = True

    def __init__(self, config: LearnedConfigT):
        super().__init__(config)
        self.lr_scale = 1.0

    def scores(self) -> dict[str, Tensor]:
        return {n: _scored(mask, n).scores for n, (_, mask) in self.masks.items()}

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
class MovementModifier(LearnedScoreModifier[MovementConfig]):
    gradual = True

    def __init__(self, config: MovementConfig):
        super().__init__(config)
        self.lr_scale = config.score_lr_scale


@register_method(OptgConfig)
class OptgModifier(LearnedScoreModifier[OptgConfig]):
    """OptG as zyxxmu/OptG's code runs it, its schedule in fractions of the run. Deviations: ties at the
    threshold go to the larger |w|, so exactly keep weights survive (the code keeps every tie, and prunes
    nothing while all scores are still 0); the score learning-rate factor follows the sigmoid at every step
    rather than once per epoch."""

    gradual = True
    epochs = 0

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        super().attach(model, ctx)
        self.epochs = ctx.epochs
        self.lr_scale = self.ramp(0)

    def ramp(self, step: int) -> float:
        """sigmoid(2 ln 99 (f - centre) / width) at step `step`, and 1 once the window has passed."""
        progress = self.progress(step)
        return 1.0 if progress >= 1 else optg_sparsity(progress, 1.0, self.config.centre, self.config.width)

    def target(self, step: int) -> float:
        return self.final * self.ramp(step)

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        self.set_lr_scale(self.ramp(epoch * self.steps_per_epoch), ctx)
        super().on_epoch_start(epoch, ctx)

    def on_step_end(self, step: int, ctx: TrainContext) -> None:
        self.set_lr_scale(self.ramp(step), ctx)
        super().on_step_end(step, ctx)

    def is_complete(self, epoch: int) -> bool:
        """At p, or in the last epoch of training (whose scores finalize ranks at p, as the paper evaluates)."""
        return self.current >= self.config.sparsity or epoch >= self.epochs - 1

    def summary(self) -> dict[str, Any]:
        return super().summary() | {"centre": self.config.centre, "width": self.config.width,
                                    "updates_per_epoch": self.config.updates_per_epoch}
