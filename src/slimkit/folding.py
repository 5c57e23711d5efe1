"""Folding an eval-mode BatchNorm into the conv or linear layer that feeds it.

In eval mode a BatchNorm is a per-channel affine map, bn(v) = v * k + c, so a layer whose output only that
BatchNorm reads can absorb it: its weights (or, for binary layers, its output scale) times k, its bias
times k plus c. Zero weights stay zero, so sparsity and pattern structure survive. Which pairs qualify is
read from a torch.fx trace; a model that does not trace folds nothing.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import Tensor, nn
from torch.fx import Tracer

from slimkit.errors import SlimkitError

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class LayerTracer(Tracer):
    """Every conv and linear (binary, quantized and masked subclasses included) stays one node."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear, *BATCHNORMS)) or super().is_leaf_module(m, qualname)


def batchnorm_pairs(model: nn.Module) -> dict[str, str]:
    """{layer: BatchNorm} for each conv or linear whose output feeds one BatchNorm (with running statistics)
    and nothing else, both called once per forward."""
    try:
        graph = LayerTracer().trace(model)
    except Exception:  # torch.fx raises many types on untraceable code; folding is only an optimisation
        return {}
    modules = dict(model.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = {}
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d | nn.Linear):
            continue
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or not isinstance(modules[users[0].target], BATCHNORMS):
            continue
        bn = modules[users[0].target]
        if calls[node.target] == 1 and calls[users[0].target] == 1 and bn.running_var is not None:
            pairs[node.target] = users[0].target
    return pairs


def batchnorm_affine(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(k, c) with bn(v) = v * k + c per channel, in eval mode."""
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise SlimkitError(f"{type(bn).__name__} tracks no running statistics (track_running_stats=False), so "
                           f"it has no eval-mode affine form to fold")
    gamma = bn.weight.detach() if bn.affine else torch.ones_like(var)
    beta = bn.bias.detach() if bn.affine else torch.zeros_like(var)
    k = gamma / torch.sqrt(var + bn.eps)
    return k, beta - mean * k


def folded_weight_bias(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm1d | nn.BatchNorm2d,
                       ) -> tuple[Tensor, Tensor]:
    """The weight and bias of a layer computing bn(layer(x)), from the layer's own (bias None: zero)."""
    k, c = batchnorm_affine(bn)
    return weight * k.reshape(-1, *[1] * (weight.ndim - 1)), c if bias is None else bias * k + c


def fold_into(layer: nn.Conv2d | nn.Linear, bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Conv2d | nn.Linear:
    """A copy of a plain float layer computing bn(layer(x))."""
    folded = copy.deepcopy(layer)
    with torch.no_grad():
        bias = None if layer.bias is None else layer.bias.detach()
        weight, bias = folded_weight_bias(layer.weight.detach(), bias, bn)
        folded.weight.copy_(weight)
        folded.bias = nn.Parameter(bias.clone(), requires_grad=layer.weight.requires_grad)
    return folded
