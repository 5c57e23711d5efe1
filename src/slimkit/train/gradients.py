"""Gradients for one-shot importance scores (SNIP, GFBS, Taylor): a forward/backward that changes nothing."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from slimkit.train.device import device_of
from slimkit.train.objective import Objective


@contextmanager
def loss_gradients(model: nn.Module, batches: Iterable[Any], objective: Objective) -> Iterator[None]:
    """Within the block, each parameter's `.grad` holds d(loss)/d(parameter), summed over `batches` in train
    mode; read the scores there. The loss is the task's own (`objective`), so scores follow what the user
    trains for, not an assumed cross-entropy.

    Scores are measured on the model as it trains (BN on batch statistics), but the measurement must not move
    it: BN running statistics and every weight are restored, and no optimiser step is taken. Every `.grad` is
    put back as it was found (the same tensor, or None): a loop that zeroes gradients after its step, or
    accumulates them over several backward passes, would otherwise add the scoring batches to its update.
    """
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    found = [(p, p.grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in found:
            p.grad = None  # the user's gradients are set aside, untouched: backward allocates new ones
        model.train()
        device = device_of(model)
        for batch in batches:
            batch = objective.to_device(batch, device)
            objective.loss(objective.forward(model, batch), objective.target(batch)).backward()
        yield
    finally:
        for p, grad in found:
            p.grad = grad
        with torch.no_grad():
            model.load_state_dict(saved)
        model.train(was_training)
