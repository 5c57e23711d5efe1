"""What each form costs the user's task: the loss increase on a few training batches when one layer alone (or
one channel group alone) takes that form at once, from the trained dense model, before any fine-tuning.

Each form is applied by the same stages the per-layer recipe will hold (target.forms.apply_stages), to a copy
of the model, so the model itself never changes and every measurement starts from it exactly. The loss is the
run's own objective (a user's loss_fn included) in eval mode. A one-shot loss is a ranking, not a forecast:
fine-tuning recovers much of it, and the run's measured accuracy is what the report judges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from slimkit.target.forms import LayerKind, apply_stages, form_stages
from slimkit.target.groups import ChannelGroups
from slimkit.train.objective import Objective


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Sequence[Any], objective: Objective) -> float:
    """The objective's loss on `batches`, in eval mode, averaged over the batches."""
    was_training = model.training
    model.eval()
    try:
        losses = [float(objective.loss(objective.forward(model, b), objective.target(b))) for b in batches]
    finally:
        model.train(was_training)
    return sum(losses) / len(losses)


def kind_sensitivity(model: nn.Module, kinds: Mapping[str, list[LayerKind]], batches: Sequence[Any],
                     objective: Objective, binary: str | None) -> dict[str, dict[str, float]]:
    """{layer: {kind name: loss increase}} for every kind each layer may take, each on this layer alone."""
    base = mean_loss(model, batches, objective)
    out: dict[str, dict[str, float]] = {}
    for layer, options in kinds.items():
        out[layer] = {}
        for kind in options:
            if kind.kind == "fp32":
                out[layer][kind.name] = 0.0
                continue
            stages = form_stages({layer: kind}, {}, binary=binary, calibration_batches=len(batches))
            out[layer][kind.name] = mean_loss(apply_stages(model, stages, batches, objective), batches,
                                              objective) - base
    return out


def width_sensitivity(model: nn.Module, groups: ChannelGroups, batches: Sequence[Any],
                      objective: Objective) -> list[dict[int, float]]:
    """Per channel group: {kept count: loss increase} with that group alone narrowed (L1 ranks its channels,
    as the recipe's channels stage will)."""
    base = mean_loss(model, batches, objective)
    out = []
    for index, group in enumerate(groups.groups):
        costs = {group.size: 0.0}
        for count in group.choices[1:]:
            stages = form_stages({}, groups.widths(groups.only(index, count)), binary=None)
            costs[count] = mean_loss(apply_stages(model, stages, batches, objective), batches, objective) - base
        out.append(costs)
    return out
