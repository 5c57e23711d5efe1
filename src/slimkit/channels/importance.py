"""Channel importance, one score per graph element; a component scores the mean of its members.

- l1: ||W_c||_1 of a conv/linear output channel, divided by its layer's mean so layers compare (Li et al.).
- bn_scale: |gamma_c| (network slimming, Liu et al.).
- taylor: |gamma_c * dL/dgamma_c| from one train-mode batch (Molchanov et al.).
- gfbs: GFBS as its official code computes it: |gamma_c|/||gamma|| * |g_c|/||g|| + w_beta * beta_c/||beta||,
  per BN layer, beta signed and no dL/dbeta.

The papers are cited, with arXiv ids, on the method configs in `slimkit.channels.modifier`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn

from slimkit.channels.graph import ChannelGraph
from slimkit.layers import layer_tensor
from slimkit.train import distributed
from slimkit.train.gradients import loss_gradients
from slimkit.train.objective import Objective


def _per_channel(graph: ChannelGraph,
                 values: Callable[[nn.BatchNorm1d | nn.BatchNorm2d], Tensor | None]) -> dict[int, float]:
    scores: dict[int, float] = {}
    for name, channel_slots in graph.channel_users.items():
        module = graph.modules[name]
        if not isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            continue
        v = values(module)
        if v is not None:
            for e, s in zip(channel_slots, v.tolist(), strict=True):
                scores[e] = s
    return scores


def l1_scores(graph: ChannelGraph) -> dict[int, float]:
    scores: dict[int, float] = {}
    for name, elements in graph.producers.items():
        weight = layer_tensor(graph.modules[name]).detach()
        norms = weight.abs().reshape(weight.shape[0], -1).sum(1)
        norms = norms / norms.mean().clamp_min(1e-12)
        scores.update(zip(elements, norms.tolist(), strict=True))
    return scores


def bn_scale_scores(graph: ChannelGraph) -> dict[int, float]:
    return _per_channel(graph, lambda bn: bn.weight.detach().abs())


def taylor_scores(graph: ChannelGraph) -> dict[int, float]:
    return _per_channel(graph, lambda bn: None if bn.weight.grad is None else (bn.weight * bn.weight.grad).abs()
                        .detach())


def gfbs_formula(gamma: Tensor, grad: Tensor, beta: Tensor, beta_weight: float = 0.05) -> Tensor:
    """s = |gamma|/||gamma|| * |g|/||g|| + w_beta * beta/||beta|| for one BN layer (norms clamped at 1e-12)."""
    def unit(v: Tensor) -> Tensor:
        return v / v.norm().clamp_min(1e-12)

    return unit(gamma.abs()) * unit(grad.abs()) + beta_weight * unit(beta)


def gfbs_scores(graph: ChannelGraph, beta_weight: float = 0.05) -> dict[int, float]:
    return _per_channel(graph, lambda bn: None if bn.weight.grad is None else gfbs_formula(
        bn.weight.detach(), bn.weight.grad.detach(), bn.bias.detach(), beta_weight))


@contextmanager
def bn_gradients(model: nn.Module, batch: Any, objective: Objective) -> Iterator[None]:
    """Within the block, BN gamma's `.grad` holds the gradient of one train-mode forward/backward of the
    task's loss, averaged over ranks so every rank ranks the same numbers (as GFBS scores); every `.grad` is
    put back as it was found afterwards (`loss_gradients`)."""
    with loss_gradients(model, [batch], objective):
        world = distributed.current().world_size
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) and module.weight.grad is not None:
                distributed.all_reduce_sum(module.weight.grad).div_(world)
        yield


CRITERIA: dict[str, Callable[[ChannelGraph], dict[int, float]]] = {
    "l1": l1_scores, "bn_scale": bn_scale_scores, "taylor": taylor_scores, "gfbs": gfbs_scores,
}
NEEDS_GRADIENTS = {"taylor", "gfbs"}
