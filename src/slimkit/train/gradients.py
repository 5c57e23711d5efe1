"""Gradients for one-shot importance scores (SNIP, GFBS, Taylor): a forward/backward that changes nothing."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def loss_gradients(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
    """Leave d(cross-entropy)/d(parameter), summed over `batches` in train mode, in each `.grad`.

    Scores are measured on the model as it trains (BN on batch statistics), but the measurement must not move
    it: BN running statistics and every weight are restored, and no optimiser step is taken.
    """
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    was_training = model.training
    model.train()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        nn.functional.cross_entropy(model(x), y).backward()
    with torch.no_grad():
        model.load_state_dict(saved)
    model.train(was_training)
