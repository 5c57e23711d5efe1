"""Channel pruning as a modifier: one-shot at start_epoch, or `steps` rounds `every` epochs apart, with
fine-tuning in between. The model is sliced for real, so the trainer rebuilds its optimiser afterwards.
The plan (kept indices relative to the original model) is the modifier's state: it is saved with every
checkpoint and in model.pt, and re-applied on resume and on load.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from slimkit.channels.plan import ChannelPlan, apply_plan
from slimkit.channels.prune import plan_pruning
from slimkit.layers import LayerSelection, select_layers
from slimkit.recipe import MethodConfig, register_method
from slimkit.train.modifier import Modifier, TrainContext


class ChannelConfig(MethodConfig):
    """Shared by channel-pruning methods: how much, how chosen, and when."""

    kind = "channels"
    ratio: float = Field(ge=0, lt=1, description="fraction of prunable channel groups removed in all")
    scope: Literal["global", "layer"] = "global"
    min_channels: int = Field(1, ge=1)
    round_to: int = Field(1, ge=1)
    keep: list[str] = Field(default_factory=list, description="fnmatch patterns of layers whose outputs stay")
    steps: int = Field(1, ge=1, description="pruning rounds; each removes an equal share of the ratio")
    every: int = Field(1, ge=1, description="epochs between rounds")


class L1Config(ChannelConfig):
    method: Literal["l1"] = "l1"


class BnScaleConfig(ChannelConfig):
    """Network slimming: |gamma| ranks channels; `l1_penalty` adds lambda * sum |gamma| to the loss until
    the last pruning round, to push unneeded channels towards zero first."""

    method: Literal["bn_scale"] = "bn_scale"
    l1_penalty: float = Field(0.0, ge=0)


class TaylorConfig(ChannelConfig):
    method: Literal["taylor"] = "taylor"


class GfbsConfig(ChannelConfig):
    method: Literal["gfbs"] = "gfbs"
    beta_weight: float = Field(0.05, ge=0)


class ChannelPruner(Modifier):
    config: ChannelConfig

    def __init__(self, config: ChannelConfig):
        super().__init__(config)
        self.plan = ChannelPlan()
        self.rounds = 0
        self.groups = [0, 0]  # removed, candidates (of the first round's model)
        self.loader = None

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        self.loader = ctx.train_loader

    def _keep(self, model: nn.Module) -> set[str]:
        if not self.config.keep:
            return set()
        return set(select_layers(model, LayerSelection(include=self.config.keep, skip_first_conv=False,
                                                       skip_last_linear=False)))

    def _batch(self) -> tuple[Tensor, Tensor]:
        return next(iter(self.loader))

    def prune_round(self, model: nn.Module) -> None:
        """Remove this round's share: after round k of n, (k/n) * ratio of the original groups are gone."""
        done, target = self.rounds / self.config.steps, (self.rounds + 1) / self.config.steps
        share = 1 - (1 - self.config.ratio * target) / (1 - self.config.ratio * done)
        batch = self._batch()
        options = {"beta_weight": self.config.beta_weight} if isinstance(self.config, GfbsConfig) else {}
        plan = plan_pruning(model, batch[0][:1], ratio=share, criterion=self.config.method, batch=batch,
                            scope=self.config.scope, min_channels=self.config.min_channels,
                            round_to=self.config.round_to, keep=self._keep(model), **options)
        apply_plan(model, plan)
        self.plan = self.plan.then(plan)
        self.groups = [self.groups[0] + plan.removed_groups, self.groups[1] or plan.candidate_groups]
        self.rounds += 1

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        next_round_epoch = self.config.start_epoch + self.rounds * self.config.every
        if self.rounds < self.config.steps and epoch == next_round_epoch:
            self.prune_round(ctx.model)
            ctx.structure_changed = True

    def loss(self, outputs: Tensor, batch: tuple[Tensor, Tensor], ctx: TrainContext) -> Tensor | None:
        penalty = getattr(self.config, "l1_penalty", 0.0)
        if not penalty or self.rounds >= self.config.steps:
            return None
        gammas = [m.weight.abs().sum() for m in ctx.model.modules() if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)]
        return penalty * torch.stack(gammas).sum() if gammas else None

    def is_complete(self, epoch: int) -> bool:
        return self.rounds >= self.config.steps

    def finalize(self, model: nn.Module) -> nn.Module:
        while self.rounds < self.config.steps:  # a run shorter than the schedule still ends pruned
            self.prune_round(model)
        return model

    def rebuild_structure(self, model: nn.Module) -> nn.Module:
        return apply_plan(model, self.plan)

    def summary(self) -> dict[str, Any]:
        return {"method": self.name, "ratio": self.config.ratio, "rounds": self.rounds,
                "removed_groups": self.groups[0], "candidate_groups": self.groups[1],
                "pruned_layers": sorted(self.plan.modules)}

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "rounds": self.rounds, "groups": list(self.groups)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plan, self.rounds = ChannelPlan.from_dict(state["plan"]), int(state["rounds"])
        self.groups = list(state.get("groups", [0, 0]))


for _config in (L1Config, BnScaleConfig, TaylorConfig, GfbsConfig):
    register_method(_config, ChannelPruner)
