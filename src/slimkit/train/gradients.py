"""Gradients for one-shot importance scores (SNIP, GFBS, Taylor): a forward/backward that changes nothing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from slimkit.train.device import device_of
from slimkit.train.objective import Objective


def loss_gradients(model: nn.Module, batches: Iterable[Any], objective: Objective) -> None:
    """Leave d(loss)/d(parameter), summed over `batches` in train mode, in each `.grad`. The loss is the
    task's own (`objective`), so scores follow what the user trains for, not an assumed cross-entropy.

    Scores are measured on the model as it trains (BN on batch statistics), but the measurement must not move
    it: BN running statistics and every weight are restored, and no optimiser step is taken.
    """
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    device = device_of(model)
    for batch in batches:
        batch = objective.to_device(batch, device)
        objective.loss(objective.forward(model, batch), objective.target(batch)).backward()
    with torch.no_grad():
        model.load_state_dict(saved)
    model.train(was_training)
