"""Sense's channel rearrangement: relabel channels so that each input tile of a layer holds channels of
similar activation sparsity. It is a pure relabelling: the producer's output rows, its norm channels and
every consumer's input columns move by the same permutation, so the network computes the same function.

A channel group is rearranged only when one plain conv/linear produces it and nothing else joins it (no
residual add, concat or option-A shortcut): a tied group would need one permutation shared across layers
whose activations differ. Those channels keep their order, and the result names which groups moved.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from slimkit.channels.graph import ChannelGraph, build_graph
from slimkit.sparsity.masks import ScoredMask, get_mask, raw_weight
from slimkit.train.device import device_of


def permute_input(x: Tensor, weight: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
    """The relabelled pair (x[:, perm], W[:, perm]); conv or linear of the pair equals that of (x, W)."""
    return x[:, perm], weight[:, perm]


@torch.no_grad()
def zero_fractions(model: nn.Module, consumers: list[str], batches: list[Tensor]) -> dict[str, Tensor]:
    """Per input channel (or feature) of each consumer, the fraction of exact zeros it receives."""
    sums: dict[str, Tensor] = {}
    hooks = []

    def hook(name: str):
        def record(_: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0]
            frac = (x == 0).float().transpose(0, 1).reshape(x.shape[1], -1).mean(1)
            sums[name] = sums.get(name, 0) + frac
        return record

    for name in consumers:
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: s / max(len(batches), 1) for name, s in sums.items()}


def _movable_producers(graph: ChannelGraph) -> dict[str, list[str]]:
    """Producer -> the consumers fed by it alone, for producers whose channels nothing else joins."""
    owners: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for kind, table in (("out", graph.producers), ("in", graph.consumers), ("chan", graph.channel_users)):
        for name, elements in table.items():
            for e in elements:
                owners[graph.find(e)].append((kind, name))
    for slots, _, _ in graph.zero_pads.values():
        for e in slots:
            owners[graph.find(e)].append(("zero_pad", ""))
    bad = {graph.find(e) for e in graph.fixed | graph.zeros}
    movable: dict[str, list[str]] = {}
    for name, elements in graph.producers.items():
        roots = [graph.find(e) for e in elements]
        module = graph.modules[name]
        if len(set(roots)) != len(roots) or any(r in bad for r in roots) or getattr(module, "groups", 1) > 1:
            continue
        members = [o for r in roots for o in owners[r]]
        if any(kind == "zero_pad" or (kind == "out" and other != name) for kind, other in members):
            continue
        consumers = sorted({other for kind, other in members if kind == "in"})
        own = set(roots)
        if consumers and all(getattr(graph.modules[c], "groups", 1) == 1
                             and all(graph.find(e) in own for e in graph.consumers[c]) for c in consumers):
            movable[name] = consumers
    return movable


def _reindex(module: nn.Module, dim: int, index: Tensor, optimizer: Optimizer | None) -> None:
    """Permute every tensor of `module` laid out along `dim` of its weight: the raw weight, its mask and
    scores, the bias (dim 0) and their optimiser state, in place, so parameters keep their identity."""
    tensors = [raw_weight(module)]
    mask = get_mask(module)
    if mask is not None:
        tensors.append(mask.mask)
        if isinstance(mask, ScoredMask):
            tensors.append(mask.scores)
    bias = getattr(module, "bias", None)
    if dim == 0 and bias is not None:
        tensors.append(bias)
    for t in tensors:
        _reindex_tensor(t, dim, index, optimizer)


def _reindex_tensor(t: Tensor, dim: int, index: Tensor, optimizer: Optimizer | None) -> None:
    t.data.copy_(t.data.index_select(dim, index))
    state = optimizer.state.get(t, {}) if optimizer is not None else {}
    for value in state.values():
        if isinstance(value, Tensor) and value.shape == t.shape:
            value.copy_(value.index_select(dim, index))


def _reindex_channels(module: nn.Module, index: Tensor, optimizer: Optimizer | None) -> None:
    """Permute a norm layer's (or per-channel PReLU's) channels, buffers included."""
    for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
        if t.ndim == 1 and t.numel() == index.numel():
            _reindex_tensor(t, 0, index, optimizer)


def _order(graph: ChannelGraph, slots: list[int], position: dict[int, int], device: torch.device) -> Tensor:
    """The gather index that lays `slots` out in the new channel order (flattened slots stay channel-major)."""
    return torch.sort(torch.tensor([position[graph.find(e)] for e in slots], device=device), stable=True).indices


@torch.no_grad()
def rearrange_channels(model: nn.Module, batches: list[Tensor], layers: list[str],
                       optimizer: Optimizer | None = None) -> dict[str, list[int]]:
    """Sort the input channels of each layer in `layers` by zero fraction (ascending, stable) where the
    channels can move, and apply the permutation to producer, norms and consumers.

    Returns producer name -> permutation (new position -> old channel). Calibration runs in eval mode.
    """
    if not batches:
        return {}
    graph = build_graph(model, batches[0][:1])
    movable = {p: cs for p, cs in _movable_producers(graph).items() if any(c in layers for c in cs)}
    fractions = zero_fractions(model, sorted({c for cs in movable.values() for c in cs}), batches)
    device = device_of(model)  # permutations index the weights where they are
    permutations: dict[str, list[int]] = {}
    for producer, consumers in movable.items():
        roots = [graph.find(e) for e in graph.producers[producer]]
        per_root: dict[int, list[float]] = defaultdict(list)
        for c in consumers:
            for e, z in zip(graph.consumers[c], fractions[c].tolist(), strict=True):
                per_root[graph.find(e)].append(z)
        z = torch.tensor([sum(per_root[r]) / len(per_root[r]) for r in roots], device=device)
        perm = torch.sort(z, stable=True).indices
        if torch.equal(perm, torch.arange(len(roots), device=device)):
            continue
        position = {roots[int(old)]: new for new, old in enumerate(perm)}
        _reindex(graph.modules[producer], 0, perm, optimizer)
        for name, slots in graph.channel_users.items():
            if graph.find(slots[0]) in position:
                _reindex_channels(graph.modules[name], _order(graph, slots, position, device), optimizer)
        for c in consumers:
            _reindex(graph.modules[c], 1, _order(graph, graph.consumers[c], position, device), optimizer)
        permutations[producer] = perm.tolist()
    return permutations
