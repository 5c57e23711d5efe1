"""The training sections of a recipe: optimiser and schedule of one phase, and the task's objective."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn

from slimkit.config import StrictModel, check_import_path, resolve_factory
from slimkit.train.device import Device, Precision
from slimkit.train.objective import LossFn, Objective, make_objective
from slimkit.trust import trust_of


class TrainConfig(StrictModel):
    """Optimiser, learning-rate schedule and length of one training phase, and where it runs (`device`: auto is
    the GPU when torch sees one; `precision: bf16` trains under bfloat16 autocast)."""

    epochs: int = Field(10, ge=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    # a warm-up counted in optimizer steps, for a port of code whose warm-up is a number of updates (RBNN's 5
    # CIFAR-10 epochs at batch 256 are 980): it keeps its length whatever the run's epochs or data size
    warmup_steps: int | None = Field(None, ge=1)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    nan_policy: Literal["stop", "skip"] = "stop"  # on a NaN or Inf loss: stop the run, or skip that batch
    device: Device = "auto"
    precision: Precision = "fp32"

    @model_validator(mode="after")
    def _milestones_in_range(self) -> TrainConfig:
        bad = [m for m in self.milestones if not 0 < m <= self.epochs]
        if bad:
            raise ValueError(f"milestones {bad} must lie in 1..epochs ({self.epochs})")
        return self

    @model_validator(mode="after")
    def _one_warmup_length(self) -> TrainConfig:
        if self.warmup_steps is not None and self.warmup_epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) and warmup_steps ({self.warmup_steps}) both "
                             "set: give the warm-up's length one way")
        return self


LOSSES: dict[str, LossFn | None] = {
    "cross_entropy": None,  # the Objective's own: class ids on dim 1 or the last dim, -100 ignored
    "mse": nn.functional.mse_loss,
    "l1": nn.functional.l1_loss,
    "smooth_l1": nn.functional.smooth_l1_loss,
    "bce_with_logits": nn.functional.binary_cross_entropy_with_logits,
}


class ObjectiveConfig(StrictModel):
    """The task's loss and metric. `loss` and `metric` take a name or an import path 'pkg.module:function';
    metric 'auto' is accuracy for cross-entropy and none otherwise (the best epoch then has the least
    validation loss)."""

    loss: str = "cross_entropy"
    metric: str | None = "auto"
    target_key: str = Field("labels", min_length=1, description="the target's key in dict batches")

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, loss: str, info: ValidationInfo) -> str:
        if loss not in LOSSES:
            if ":" not in loss:
                raise ValueError(f"unknown loss; allowed: {', '.join(LOSSES)} or an import path 'pkg.module:fn'")
            check_import_path(loss, "objective.loss", trust_of(info.context))
        return loss

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str | None, info: ValidationInfo) -> str | None:
        if metric not in (None, "auto", "accuracy", "none"):
            if ":" not in metric:
                raise ValueError("unknown metric; allowed: auto, accuracy, none or an import path 'pkg.module:fn'")
            check_import_path(metric, "objective.metric", trust_of(info.context))
        return metric

    def build(self, label_smoothing: float = 0.0) -> Objective:
        loss = LOSSES[self.loss] if self.loss in LOSSES else resolve_factory(self.loss, "objective.loss")
        metric = self.metric if self.metric in (None, "auto", "accuracy") else (
            None if self.metric == "none" else resolve_factory(self.metric, "objective.metric"))
        return make_objective(loss, metric, self.target_key, label_smoothing)
