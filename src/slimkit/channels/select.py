"""Choosing the components to remove: global or per-layer ratios, a per-layer minimum, optional rounding.

Selection follows GFBS's code: rank every prunable component by score (descending) and remove the ranks
at and beyond int(N * (1 - ratio)). Removal walks from the lowest score; a component whose removal would
leave any layer with fewer than `min_channels` outputs is skipped, and the next one is taken instead, so the
requested ratio is met whenever the guard allows. Ties break by component id (model order).
"""

from __future__ import annotations

from collections import Counter
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


def select_removed(graph: ChannelGraph, scores: dict[int, float], ratio: float,
                   scope: Literal["global", "layer"] = "global", min_channels: int = 1,
                   round_to: int = 1) -> set[int]:
    """Roots of the components to remove."""
    candidates = component_scores(graph, scores)
    per_component, kept = _layers_of(graph)
    removed: set[int] = set()

    def can_remove(root: int) -> bool:
        return all(kept[layer] - count >= min_channels for layer, count in per_component.get(root, {}).items())

    def remove_lowest(pool: list[int], quota: int) -> None:
        taken = 0
        for root in sorted(pool, key=lambda r: (candidates[r], r)):
            if taken == quota:
                break
            if can_remove(root):
                removed.add(root)
                taken += 1
                for layer, count in per_component.get(root, {}).items():
                    kept[layer] -= count

    if scope == "global":
        remove_lowest(list(candidates), len(candidates) - int(len(candidates) * (1 - ratio)))
    else:
        families: dict[frozenset, list[int]] = {}
        for root in candidates:
            families.setdefault(frozenset(per_component.get(root, {})), []).append(root)
        for pool in families.values():
            remove_lowest(pool, len(pool) - int(len(pool) * (1 - ratio)))
    if round_to > 1:
        for layer in list(kept):
            while kept[layer] % round_to:
                back = [r for r in removed if layer in per_component.get(r, {})]
                if not back:
                    break
                root = max(back, key=lambda r: (candidates[r], -r))
                removed.discard(root)
                for other, count in per_component[root].items():
                    kept[other] += count
    return removed

