"""Choosing the components to remove: global or per-layer ratios, a per-layer minimum, optional rounding; or
the exact output widths of named layers (`select_widths`, what a latency target's per-layer recipe writes).

Selection follows GFBS's code: rank every prunable component by score (descending) and remove the ranks
at and beyond int(N * (1 - ratio)). Removal walks from the lowest score; a component whose removal would
leave any layer with fewer than `min_channels` outputs is skipped, and the next one is taken instead, so the
requested ratio is met whenever the guard allows. Ties break by component id (model order).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from slimkit.channels.graph import ChannelGraph
from slimkit.errors import SlimkitError


def component_scores(graph: ChannelGraph, scores: dict[int, float]) -> dict[int, float]:
    """Mean member score per prunable component; components without any scored member are not candidates."""
    out = {}
    for root, members in graph.prunable().items():
        values = [scores[m] for m in members if m in scores]
        if values:
            out[root] = sum(values) / len(values)
    return out


def layer_counts(graph: ChannelGraph) -> tuple[dict[int, Counter], Counter]:
    """Per component: how many outputs of each producer layer it holds; and each layer's total outputs."""
    per_component: dict[int, Counter] = {}
    totals: Counter = Counter()
    for name, elements in graph.producers.items():
        totals[name] = len(elements)
        for e in elements:
            per_component.setdefault(graph.find(e), Counter())[name] += 1
    return per_component, totals


def component_families(candidates: dict[int, float],
                       per_component: dict[int, Counter]) -> dict[frozenset[str], list[int]]:
    """The candidate components grouped by the producer layers they span: a family shares one count of kept
    components (a residual stream's layers keep one width), and per-layer scope prunes each family alike."""
    families: dict[frozenset[str], list[int]] = {}
    for root in candidates:
        families.setdefault(frozenset(per_component.get(root, {})), []).append(root)
    return families


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
    removal = _Removal(component_scores(graph, scores), *layer_counts(graph), min_channels)
    candidates = removal.candidates
    if scope == "global":
        removal.remove_lowest(list(candidates), len(candidates) - int(len(candidates) * (1 - ratio)))
    else:  # per layer: each family of components spanning the same layers loses its own share
        for pool in component_families(candidates, removal.per_component).values():
            removal.remove_lowest(pool, len(pool) - int(len(pool) * (1 - ratio)))
    if round_to > 1:
        removal.round_kept(round_to)
    return removal.removed


def _per_member(pool: list[int], per_component: dict[int, Counter], layer: str) -> int:
    """How many outputs of `layer` each component of a family holds (the same for all of them)."""
    counts = {per_component[root][layer] for root in pool}
    if len(counts) != 1:
        raise SlimkitError(f"widths: the channel groups through '{layer}' hold different numbers of its outputs "
                           f"({sorted(counts)}), so no width of it names one count of groups")
    return counts.pop()


def _settle(layer: str, width: int, families: dict[frozenset[str], list[int]], kept: dict[frozenset[str], int],
            per_component: dict[int, Counter], total: int) -> bool:
    """Settle the one family of `layer` still open from its width (or check the width when none is open);
    False while two or more are open."""
    spanning = [f for f in families if layer in f]
    open_families = [f for f in spanning if f not in kept]
    if len(open_families) > 1:
        return False
    members = {f: _per_member(families[f], per_component, layer) for f in spanning}
    known = total - sum(len(families[f]) * members[f] for f in open_families) - sum(
        (len(families[f]) - kept[f]) * members[f] for f in spanning if f in kept)
    if not open_families:
        if known != width:
            raise SlimkitError(f"widths: '{layer}' keeps {known} channels by the widths of the layers it shares "
                               f"channel groups with (or has no prunable group), not {width}")
        return True
    family = open_families[0]
    count, rest = divmod(width - known, members[family])
    if rest or not 0 <= count <= len(families[family]):
        raise SlimkitError(f"widths: '{layer}' cannot keep {width} channels: it has {known} that other widths or "
                           f"fixed channels set, and its group adds {members[family]} per channel kept, up to "
                           f"{len(families[family])}")
    kept[family] = count
    return True


def select_widths(graph: ChannelGraph, scores: dict[int, float], widths: Mapping[str, int]) -> set[int]:
    """Roots of the components to remove so that every layer named in `widths` keeps exactly that many output
    channels (lowest scores go first).

    Components that span the same layers form a family; a family shares one count, so a residual stream's
    layers share one width. A layer's width is its fixed channels plus each of its families' kept count, so a
    family's count follows from a named layer once that layer's other families are known (a family nested in
    a wider stream, such as the channels a downsampling stage adds, is found after the stream). Families no
    named layer reaches keep every component; a width the families cannot give, or two widths that disagree,
    is an error naming the layer."""
    candidates = component_scores(graph, scores)
    per_component, totals = layer_counts(graph)
    unknown = [name for name in widths if name not in graph.producers]
    if unknown:
        raise SlimkitError(f"widths: {', '.join(unknown)} produce no channels of this model; layers that do: "
                           f"{', '.join(graph.producers)}")
    families = component_families(candidates, per_component)
    kept: dict[frozenset[str], int] = {}
    pending = dict(widths)
    while pending:
        settled = [layer for layer, width in pending.items()
                   if _settle(layer, width, families, kept, per_component, totals[layer])]
        if not settled:
            raise SlimkitError(f"widths: {', '.join(pending)} share channel groups that no named layer settles "
                               f"alone; name the width of a layer of each group")
        for layer in settled:
            del pending[layer]
    removed: set[int] = set()
    for family, count in kept.items():
        pool = sorted(families[family], key=lambda root: (candidates[root], root))
        removed.update(pool[:len(pool) - count])
    return removed
