"""Channel pruning as a modifier: one-shot at start_epoch, or `steps` rounds `every` epochs apart, with
fine-tuning in between. The model is sliced for real, so the trainer rebuilds its optimiser afterwards.
The plan (kept indices relative to the original model) is the modifier's state: it is saved with every
checkpoint and in model.pt, and re-applied on resume and on load.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from slimkit.channels.importance import NEEDS_GRADIENTS
from slimkit.channels.plan import PLAN_FILE, ChannelPlan, apply_plan
from slimkit.channels.prune import Criterion, plan_pruning
from slimkit.errors import SlimkitError
from slimkit.layers import LayerSelection, select_layers, selection_issues
from slimkit.methods import MethodConfig, register_method
from slimkit.train.modifier import Modifier, TrainContext


class ChannelConfig(MethodConfig):
    """Shared by channel-pruning methods: how much, how chosen, and when."""

    kind = "channels"
    method: Criterion  # each method's Literal name is its importance criterion
    ratio: float = Field(ge=0, lt=1, description="fraction of prunable channel groups removed in all")
    scope: Literal["global", "layer"] = "global"
    min_channels: int = Field(1, ge=1)
    round_to: int = Field(1, ge=1)
    keep: list[str] = Field(default_factory=list, description="fnmatch patterns of layers whose outputs stay")
    steps: int = Field(1, ge=1, description="pruning rounds; each removes an equal share of the ratio")
    every: int = Field(1, ge=1, description="epochs between rounds")
    widths: dict[str, int] = Field(
        default_factory=dict, description="output channels each named layer keeps, its coupled groups with it (a "
        "per-layer recipe, as a latency target writes it): with ratio 0, pruned once when the stage attaches, so "
        "the stages after it attach to the sliced layers")

    @model_validator(mode="after")
    def _widths_alone(self) -> ChannelConfig:
        if not self.widths:
            return self
        small = {name: width for name, width in self.widths.items() if width < 1}
        if small:
            raise ValueError(f"'widths': every layer keeps at least 1 channel; got {small}")
        if self.ratio or self.steps != 1 or self.start_epoch:
            raise ValueError(f"'widths' set each group's size once, as the stage attaches: give ratio 0, steps 1 "
                             f"and start_epoch 0 with them (got ratio {self.ratio}, steps {self.steps}, "
                             f"start_epoch {self.start_epoch})")
        return self

    def criterion_options(self) -> dict[str, Any]:
        """Extra arguments of this method's importance criterion (see `plan_pruning`)."""
        return {}

    @property
    def penalty(self) -> float:
        """Weight of an L1 penalty on BN scales while rounds remain (network slimming); 0 for none."""
        return 0.0


class L1Config(ChannelConfig):
    """L1 filter norm: s_c = ||W_c||_1 over the filter's weights (divided by the layer mean so layers compare);
    small-norm filters give weak outputs, so removing them costs little accuracy.

    References:
        Li, Kadav, Durdanovic, Samet & Graf, "Pruning Filters for Efficient ConvNets", ICLR 2017,
        arXiv:1608.08710.
    """

    method: Literal["l1"] = "l1"


class BnScaleConfig(ChannelConfig):
    """Network slimming: |gamma| ranks channels; `l1_penalty` adds lambda * sum |gamma| to the loss until
    the last pruning round, to push unneeded channels towards zero first.

    s_c = |gamma_c| of the BN after the channel; L = CE + lambda sum |gamma| makes the scales sparse.

    References:
        Liu et al., "Learning Efficient Convolutional Networks through Network Slimming", ICCV 2017,
        arXiv:1708.06519.
    """

    method: Literal["bn_scale"] = "bn_scale"
    l1_penalty: float = Field(0.0, ge=0)

    @property
    def penalty(self) -> float:
        return self.l1_penalty


class TaylorConfig(ChannelConfig):
    """Taylor importance: s_c = |gamma_c * dL/dgamma_c| from one train-mode batch, the first-order estimate of
    the loss change when channel c is zeroed (the paper squares it; the ranking is the same).

    References:
        Molchanov, Mallya, Tyree, Frosio & Kautz, "Importance Estimation for Neural Network Pruning", CVPR 2019,
        arXiv:1906.10771.
    """

    method: Literal["taylor"] = "taylor"


class GfbsConfig(ChannelConfig):
    """GFBS: s_c = |gamma_c|/||gamma|| * |g_c|/||g|| + beta_weight * beta_c/||beta|| per BN layer, g = dL/dgamma
    from one train-mode batch, beta signed (as the official code): the Taylor term of the BN scale plus the
    shift, which decides how much of the channel passes the ReLU.

    References:
        Liu, Li, Chen & Yuan, "Exploring Gradient Flow Based Saliency for DNN Model Compression", ACM MM 2021,
        arXiv:2110.12477.
    """

    method: Literal["gfbs"] = "gfbs"
    beta_weight: float = Field(0.05, ge=0)

    def criterion_options(self) -> dict[str, Any]:
        return {"beta_weight": self.beta_weight}


@register_method(L1Config, BnScaleConfig, TaylorConfig, GfbsConfig)
class ChannelModifier(Modifier):
    config: ChannelConfig

    def __init__(self, config: ChannelConfig):
        super().__init__(config)
        self.plan = ChannelPlan()
        self.rounds = 0
        self.groups = [0, 0]  # removed, candidates (of the first round's model)
        self.ctx: TrainContext | None = None
        self.sliced_at_attach: dict[str, Any] | None = None  # a widths stage's plan, applied as it attached

    def check(self, model: nn.Module) -> list[str]:
        if not self.config.keep:
            return []
        return selection_issues(model, LayerSelection(include=self.config.keep, skip_first_conv=False,
                                                      skip_last_linear=False), "keep")

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        """A `widths` stage prunes now (not at epoch 0), so later stages put their masks and quantizers on the
        sliced layers. It does so on a resume too: the plan follows from the weights the run started from, which
        a resume starts from again, and the saved plan must equal it (load_state_dict)."""
        self.ctx = ctx
        if self.config.widths:
            self.prune_round(model)
            self.sliced_at_attach = self.plan.to_dict()

    def _keep(self, model: nn.Module) -> set[str]:
        if not self.config.keep:
            return set()
        return set(select_layers(model, LayerSelection(include=self.config.keep, skip_first_conv=False,
                                                       skip_last_linear=False)))

    def prune_round(self, model: nn.Module) -> None:
        """Remove this round's share: after round k of n, (k/n) * ratio of the original groups are gone."""
        done, target = self.rounds / self.config.steps, (self.rounds + 1) / self.config.steps
        share = 1 - (1 - self.config.ratio * target) / (1 - self.config.ratio * done)
        if self.ctx is None:
            raise SlimkitError(f"{self.name}: attach the modifier (slimkit.prepare) before pruning")
        needs = f"{self.name} pruning"
        example = self.ctx.input_tensors(1, needs)[0][:1]
        batch = self.ctx.batches(1, needs)[0] if self.config.method in NEEDS_GRADIENTS else None
        plan = plan_pruning(model, example, ratio=share, criterion=self.config.method, batch=batch,
                            objective=self.ctx.objective, scope=self.config.scope,
                            min_channels=self.config.min_channels, round_to=self.config.round_to,
                            keep=self._keep(model), widths=self.config.widths or None,
                            **self.config.criterion_options())
        apply_plan(model, plan)
        self.plan = self.plan.then(plan)
        self.groups = [self.groups[0] + plan.removed_groups, self.groups[1] or plan.candidate_groups]
        self.rounds += 1

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        next_round_epoch = self.config.start_epoch + self.rounds * self.config.every
        if self.rounds < self.config.steps and epoch == next_round_epoch:
            self.prune_round(ctx.model)
            ctx.structure_changed = True

    def loss(self, outputs: Tensor, batch: Any, ctx: TrainContext) -> Tensor | None:
        penalty = self.config.penalty
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
        if self.sliced_at_attach is not None:  # a widths stage sliced the model as it attached
            return model
        return apply_plan(model, self.plan)

    def summary(self) -> dict[str, Any]:
        return {"method": self.name, "ratio": self.config.ratio, "rounds": self.rounds,
                "removed_groups": self.groups[0], "candidate_groups": self.groups[1],
                "pruned_layers": sorted(self.plan.modules)}

    def artifacts(self) -> dict[str, Any]:
        """The pruning plan as plain JSON: `slimkit.load(arch, plan, state_dict)` rebuilds the model from it."""
        return {PLAN_FILE: self.plan.to_dict()}

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "rounds": self.rounds, "groups": list(self.groups)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        plan = ChannelPlan.from_dict(state["plan"])
        if self.sliced_at_attach is not None and plan.to_dict() != self.sliced_at_attach:
            raise SlimkitError(f"{self.name}: the saved channel plan differs from the one these widths give the model "
                               f"now; resume from the model the run started from")
        self.plan, self.rounds = plan, int(state["rounds"])
        self.groups = list(state.get("groups", [0, 0]))
