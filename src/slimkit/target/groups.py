"""Channel groups that share one width, from the channel graph (slimkit.channels), and the widths they give.

The channel graph joins every channel that must go with another (a residual add joins the channels of every
layer that writes the stream). Components spanning the same producer layers form a family; a family keeps one
count of components, so a residual stream's layers share one width. A layer's output width is its fixed
channels plus each of its families' kept count, and a layer that reads a family loses inputs with it. The
target chooses a kept count per family among its options (fractions of its size, rounded to multiples of 8 or
16) and writes the result as the channels stage's per-layer `widths`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from slimkit.channels.graph import build_graph
from slimkit.channels.importance import CRITERIA
from slimkit.channels.select import component_families, component_scores, layer_counts


@dataclass(frozen=True)
class ChannelGroup:
    """A family of channel groups: the layers that write it (outputs per member) and read it (inputs per
    member), its size in members, and the kept counts a target may give it (the first is its size)."""

    producers: dict[str, int]
    consumers: dict[str, int]
    size: int
    choices: tuple[int, ...]

    @property
    def name(self) -> str:
        return "+".join(self.producers)


@dataclass(frozen=True)
class ChannelGroups:
    """The model's narrowable families, and each target layer's channels as the model has them."""

    groups: list[ChannelGroup]
    out_channels: dict[str, int]
    in_channels: dict[str, int]

    def out_width(self, layer: str, kept: Sequence[int]) -> int:
        return self.out_channels[layer] - sum((g.size - k) * g.producers.get(layer, 0)
                                              for g, k in zip(self.groups, kept, strict=True))

    def in_width(self, layer: str, kept: Sequence[int]) -> int:
        return self.in_channels[layer] - sum((g.size - k) * g.consumers.get(layer, 0)
                                             for g, k in zip(self.groups, kept, strict=True))

    def full(self) -> tuple[int, ...]:
        return tuple(g.size for g in self.groups)

    def only(self, index: int, count: int) -> tuple[int, ...]:
        """Every group at its size but group `index`, at `count`."""
        return with_count(self.full(), index, count)

    def widths(self, kept: Sequence[int]) -> dict[str, int]:
        """The channels stage's `widths` for these kept counts: every layer that writes a family, so that each
        family's count is settled (select.select_widths); empty when nothing narrows."""
        if tuple(kept) == self.full():
            return {}
        return {layer: self.out_width(layer, kept) for g in self.groups for layer in g.producers}


def with_count(kept: Sequence[int], index: int, count: int) -> tuple[int, ...]:
    """`kept` with group `index` at `count`."""
    return (*kept[:index], count, *kept[index + 1:])


def _choices(size: int, fractions: Sequence[float], round_to: int) -> tuple[int, ...]:
    """The family's size, then each fraction of it rounded to a multiple of `round_to`, at least `round_to`
    and below the size, largest first."""
    counts = {round(f * size / round_to) * round_to for f in fractions}
    return (size, *sorted((c for c in counts if round_to <= c < size), reverse=True))


def _uniform(counts: dict[int, Counter], pool: list[int]) -> dict[str, int] | None:
    """{layer: per-member count} when every member of `pool` holds the same count of each layer, else None."""
    layers = {layer for root in pool for layer in counts.get(root, {})}
    out = {}
    for layer in layers:
        values = {counts.get(root, Counter())[layer] for root in pool}
        if len(values) != 1:
            return None
        out[layer] = values.pop()
    return out


def channels_of(module: nn.Module) -> tuple[int, int]:
    """(input, output) channels of a conv or linear layer."""
    if isinstance(module, nn.Conv2d):
        return module.in_channels, module.out_channels
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    raise TypeError(f"{type(module).__name__} is not a conv or linear layer")


def channel_groups(model: nn.Module, example: Tensor, layers: Mapping[str, nn.Module], fractions: Sequence[float],
                   round_to: int) -> ChannelGroups:
    """The families of `model` (traced on `example`) whose writers and readers are all in `layers` (plain conv
    and linear layers, which channel surgery slices), with the kept counts `fractions` and `round_to` give."""
    graph = build_graph(model, example)
    candidates = component_scores(graph, CRITERIA["l1"](graph))
    per_component, _ = layer_counts(graph)
    read: dict[int, Counter] = {}
    for name, slots in graph.consumers.items():
        for element in slots:
            read.setdefault(graph.find(element), Counter())[name] += 1
    groups = []
    for pool in component_families(candidates, per_component).values():
        producers, consumers = _uniform(per_component, pool), _uniform(read, pool)
        if not producers or consumers is None or not set(producers) | set(consumers) <= set(layers):
            continue  # no layer writes it (the channels stage names writers), or one the target cannot slice
        choices = _choices(len(pool), fractions, round_to)
        if len(choices) > 1:
            groups.append(ChannelGroup(producers, consumers, len(pool), choices))
    return without_groups(layers, groups)


def without_groups(layers: Mapping[str, nn.Module], groups: Sequence[ChannelGroup] = ()) -> ChannelGroups:
    """`layers` with `groups` (none: every layer keeps its width, as for a model the channel graph cannot trace)."""
    sizes = {name: channels_of(module) for name, module in layers.items()}
    return ChannelGroups(list(groups), {n: out for n, (_, out) in sizes.items()},
                         {n: in_ for n, (in_, _) in sizes.items()})
