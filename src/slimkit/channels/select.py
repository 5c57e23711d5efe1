"""Choosing the components to remove: global or per-layer ratios, a per-layer minimum, optional rounding.

Selection follows GFBS's code: rank every prunable component by score (descending) and remove the ranks
at and beyond int(N * (1 - ratio)). Removal walks from the lowest score; a component whose removal would
leave any layer with fewer than `min_channels` outputs is skipped, and the next one is taken instead, so the
requested ratio is met whenever the guard allows. Ties break by component id (model order).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from slimkit.channels.graph import ChannelGraph


def component_scores(graph: ChannelGraph, scores: dict[int, float]) -> dict[int, float]:
    """Mean member score per prunable component; components without any scored member are not candidates."""
    out = {}
    for root, members in graph.prunable().items():
        values = [scores[m] for m in members if m in scores]
        if values:
            out[root] = sum(values) / len(values)
    return out


def _layers_of(graph: ChannelGraph) -> tuple[dict[int, Counter], Counter]:
    """Per component: how many outputs of each producer layer it holds; and each layer's total outputs."""
    per_component: dict[int, Counter] = {}
    totals: Counter = Counter()
    for name, elements in graph.producers.items():
        totals[name] = len(elements)
        for e in elements:
            per_component.setdefault(graph.find(e), Counter())[name] += 1
    return per_component, totals


@dataclass
class _Removal:
    """A removal in progress: the candidates' scores, how many outputs of each layer every component holds,
    each layer's outputs still kept, and the roots removed so far."""

    candidates: dict[int, float]
    per_component: dict[int, Counter]
    kept: Counter
    min_channels: int
    removed: set[int] = field(default_factory=set)

    def can_remove(self, root: int) -> bool:
        return all(self.kept[layer] - count >= self.min_channels
                   for layer, count in self.per_component.get(root, {}).items())

    def remove_lowest(self, pool: list[int], quota: int) -> None:
        """Remove up to `quota` of `pool`, lowest score first, skipping any the per-layer minimum forbids."""
        taken = 0
        for root in sorted(pool, key=lambda r: (self.candidates[r], r)):
            if taken == quota:
                break
            if self.can_remove(root):
                self.removed.add(root)
                taken += 1
                for layer, count in self.per_component.get(root, {}).items():
                    self.kept[layer] -= count

    def round_kept(self, round_to: int) -> None:
        """Put back each layer's highest-scoring removed components until its kept outputs are a multiple of
        `round_to`, or none of its components is left to put back."""
        for layer in list(self.kept):
            while self.kept[layer] % round_to:
                back = [r for r in self.removed if layer in self.per_component.get(r, {})]
                if not back:
                    break
                root = max(back, key=lambda r: (self.candidates[r], -r))
                self.removed.discard(root)
                for other, count in self.per_component[root].items():
                    self.kept[other] += count


def select_removed(graph: ChannelGraph, scores: dict[int, float], ratio: float,
                   scope: Literal["global", "layer"] = "global", min_channels: int = 1,
                   round_to: int = 1) -> set[int]:
    """Roots of the components to remove."""
    removal = _Removal(component_scores(graph, scores), *_layers_of(graph), min_channels)
    candidates = removal.candidates
    if scope == "global":
        removal.remove_lowest(list(candidates), len(candidates) - int(len(candidates) * (1 - ratio)))
    else:  # per layer: each family of components spanning the same layers loses its own share
        families: dict[frozenset, list[int]] = {}
        for root in candidates:
            families.setdefault(frozenset(removal.per_component.get(root, {})), []).append(root)
        for pool in families.values():
            removal.remove_lowest(pool, len(pool) - int(len(pool) * (1 - ratio)))
    if round_to > 1:
        removal.round_kept(round_to)
    return removal.removed
