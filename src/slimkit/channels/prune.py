"""One call that prunes channels: trace, score, select, plan, slice."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from contextlib import nullcontext
from typing import Any, Literal

from torch import Tensor, nn

from slimkit.channels.graph import build_graph
from slimkit.channels.importance import CRITERIA, NEEDS_GRADIENTS, bn_gradients, gfbs_scores
from slimkit.channels.plan import ChannelPlan, apply_plan, make_plan
from slimkit.channels.select import component_scores, select_removed, select_widths
from slimkit.errors import SlimkitError
from slimkit.train.objective import Objective

Criterion = Literal["l1", "bn_scale", "taylor", "gfbs"]


def plan_pruning(model: nn.Module, example: Tensor, *, ratio: float, criterion: Criterion = "l1",
                 batch: Any = None, objective: Objective | None = None, scope: Literal["global", "layer"] = "global",
                 min_channels: int = 1, round_to: int = 1, keep: Collection[str] = frozenset(),
                 beta_weight: float = 0.05, widths: Mapping[str, int] | None = None) -> ChannelPlan:
    """The plan that removes `ratio` of the prunable channel groups of `model` by `criterion`, or (`widths`,
    with ratio 0) the groups that leave each named layer exactly its width (select.select_widths).

    Gradient criteria (taylor, gfbs) need `batch`: one train-mode forward and backward of the task's loss
    (`objective`, cross-entropy on class ids by default).
    Layers named in `keep` keep all their output channels. `beta_weight` is GFBS's w_beta.
    """
    if not 0 <= ratio < 1:
        raise SlimkitError(f"channel ratio must lie in [0, 1), not {ratio}")
    if widths and ratio:
        raise SlimkitError(f"channel widths set every pruned group's size; give ratio 0 with them, not {ratio}")
    if criterion not in CRITERIA:
        raise SlimkitError(f"unknown channel criterion {criterion!r}; allowed: {', '.join(CRITERIA)}")
    graph = build_graph(model, example, keep)
    if criterion in NEEDS_GRADIENTS and batch is None:
        raise SlimkitError(f"criterion {criterion!r} needs a batch of training data (batch=...)")
    with bn_gradients(model, batch, objective or Objective()) if criterion in NEEDS_GRADIENTS else nullcontext():
        scores = gfbs_scores(graph, beta_weight) if criterion == "gfbs" else CRITERIA[criterion](graph)
    if not graph.producers and ratio > 0:  # every layer is applied to another dim than 1: token-major blocks
        raise SlimkitError("no conv or linear layer of this model produces channels on dim 1 (a Linear applied to "
                           "the last dimension of a token-major (N, T, C) tensor is never pruned here); for "
                           "transformer feed-forwards and attention heads use "
                           "slimkit.channels.prune_heads_and_neurons")
    if not scores and (ratio > 0 or widths):
        raise SlimkitError(f"criterion {criterion!r} scores no channel of this model (it reads BatchNorm layers, "
                           f"and the model has none); use l1")
    removed = select_widths(graph, scores, widths) if widths else \
        select_removed(graph, scores, ratio, scope, min_channels, round_to)
    return make_plan(graph, removed, len(component_scores(graph, scores)))


def prune_channels(model: nn.Module, example: Tensor, *, ratio: float, criterion: Criterion = "l1",
                   batch: Any = None, **options: Any) -> tuple[nn.Module, ChannelPlan]:
    """Prune `model` in place; returns it (an ordinary, smaller nn.Module) and the plan of kept indices."""
    plan = plan_pruning(model, example, ratio=ratio, criterion=criterion, batch=batch, **options)
    return apply_plan(model, plan), plan
