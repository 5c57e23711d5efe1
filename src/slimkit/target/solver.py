"""Picking one form per layer and one width per channel group to reach a latency target at the least loss.

The prediction is additive over layers: the dense network's measured time, plus each layer's change (its
chosen form's time at its output width, scaled by the share of input channels it still reads, minus its dense
time). A layer timed alone pays a whole inference's fixed costs (and this machine's noise), so where the layers'
dense times sum to more than the network they are part of, every change is scaled by network / sum: the layers
never account for more than the whole, and the prediction never drops below zero. The cost is additive too:
each layer's kind and each group's width cost the loss increase measured for it alone (target.sensitivity).
Widths and kinds interact (a group's width sets its writers' output widths and its readers' input widths), so
the solver is greedy over both: from the dense model it takes, step by step, the move (one layer's kind, or one
group's width) with the least loss per millisecond saved, until the prediction reaches the target; then it
undoes what the target no longer needs, most costly first. A form that measured slower than the layer's dense
form is never a move. A target that no sequence of moves reaches is reported as unreachable, with the fastest
point found (that walk's, or one for speed alone, whichever is faster); it is never relaxed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from slimkit.target.cache import Timing
from slimkit.target.forms import FP32, LayerKind
from slimkit.target.groups import ChannelGroups, with_count


@dataclass(frozen=True)
class LayerTable:
    """One layer's measured forms (ms per kind name and output width: fp32 at the full width always), its
    channels as the model has them, and the loss increase of each kind on this layer alone (fp32: 0)."""

    times: dict[str, dict[int, Timing]]
    out_channels: int
    in_channels: int
    sensitivity: dict[str, float]

    @property
    def dense_ms(self) -> float:
        return self.times[FP32.name][self.out_channels].median

    def ms(self, kind: str, width: int) -> float | None:
        """The kind's time at `width`: measured, or for fp32 and int8 interpolated between the widths measured
        (linearly; proportionally below the narrowest); None where the kind was not measured at that width."""
        measured = self.times.get(kind)
        if not measured:
            return None
        if width in measured:
            return measured[width].median
        if LayerKind.parse(kind).keeps_width:
            return None
        below = [w for w in measured if w < width]
        above = [w for w in measured if w > width]
        if not above:
            return None
        high = min(above)
        if not below:
            return measured[high].median * width / high
        low = max(below)
        share = (width - low) / (high - low)
        return measured[low].median + share * (measured[high].median - measured[low].median)

    def allows(self, kind: str, width: int) -> bool:
        """Whether the layer may take `kind` at `width`: it was measured (or interpolates), and it is faster
        than the layer's dense form, except the dense form itself."""
        ms = self.ms(kind, width)
        if ms is None or kind not in self.sensitivity:
            return False
        return (kind == FP32.name and width == self.out_channels) or ms < self.dense_ms


@dataclass(frozen=True)
class Problem:
    """Everything the solver reads: each layer's table, the channel groups with each kept count's loss
    increase, and the dense network's time in the engine the tables were measured in."""

    layers: dict[str, LayerTable]
    groups: ChannelGroups
    group_sensitivity: list[dict[int, float]]
    network_ms: float


@dataclass(frozen=True)
class Point:
    """A choice: each layer's kind (by name) and each channel group's kept count."""

    kinds: tuple[tuple[str, str], ...]
    kept: tuple[int, ...]

    @property
    def kind_of(self) -> dict[str, str]:
        return dict(self.kinds)

    def with_kind(self, layer: str, kind: str) -> Point:
        return replace(self, kinds=tuple((n, kind if n == layer else k) for n, k in self.kinds))


@dataclass(frozen=True)
class Solution:
    """The chosen point, its predicted time and loss increase, and whether the prediction reaches the target."""

    point: Point
    predicted_ms: float
    sensitivity: float
    target_ms: float
    reached: bool

    def layers(self, problem: Problem, scale: float) -> list[dict[str, Any]]:
        """Per layer: the chosen kind, its widths, its dense and chosen times alone (with the chosen one's IQR),
        and its predicted time in the network (the time alone times `scale`, the layers' share of the network)."""
        lines = []
        for name, kind in self.point.kinds:
            table = problem.layers[name]
            out_width = problem.groups.out_width(name, self.point.kept)
            in_width = problem.groups.in_width(name, self.point.kept)
            measured = table.times[kind].get(out_width)
            alone = _layer_ms(table, kind, out_width, in_width)
            lines.append({"layer": name, "form": kind, "out_channels": out_width, "in_channels": in_width,
                          "dense_ms": table.dense_ms, "alone_ms": alone, "predicted_ms": scale * alone,
                          "iqr_ms": measured.iqr if measured is not None else None,
                          "sensitivity": table.sensitivity[kind]})
        return lines


def _layer_ms(table: LayerTable, kind: str, out_width: int, in_width: int) -> float:
    ms = table.ms(kind, out_width)
    if ms is None:
        raise ValueError(f"{kind} at width {out_width} was never allowed")
    return ms * in_width / table.in_channels


class Solver:
    """Predicts and scores points of one problem, and walks them (see the module docstring)."""

    def __init__(self, problem: Problem):
        self.problem = problem
        dense = sum(table.dense_ms for table in problem.layers.values())
        self.scale = min(1.0, problem.network_ms / dense) if dense > 0 else 1.0  # the layers' share of the network

    def dense(self) -> Point:
        return Point(tuple((name, FP32.name) for name in self.problem.layers), self.problem.groups.full())

    def predict(self, point: Point) -> float:
        groups = self.problem.groups
        change = 0.0
        for name, kind in point.kinds:
            table = self.problem.layers[name]
            change += _layer_ms(table, kind, groups.out_width(name, point.kept), groups.in_width(name, point.kept))
            change -= table.dense_ms
        return self.problem.network_ms + self.scale * change

    def cost(self, point: Point) -> float:
        layers = sum(self.problem.layers[name].sensitivity[kind] for name, kind in point.kinds)
        widths = sum(s[k] for s, k in zip(self.problem.group_sensitivity, point.kept, strict=True))
        return layers + widths

    def moves(self, point: Point) -> Iterator[Point]:
        """Every point one step away: one layer's kind changed (where allowed at its width), or one group's
        kept count changed (its writers keep their kinds where allowed at the new width, else take the least
        costly kind allowed there; no such kind, no move)."""
        groups = self.problem.groups
        for name, current in point.kinds:
            table = self.problem.layers[name]
            width = groups.out_width(name, point.kept)
            yield from (point.with_kind(name, k) for k in table.sensitivity if k != current and table.allows(k, width))
        for index, group in enumerate(groups.groups):
            for count in group.choices:
                if count != point.kept[index]:
                    moved = self._narrowed(point, index, count)
                    if moved is not None:
                        yield moved

    def _narrowed(self, point: Point, index: int, count: int) -> Point | None:
        """`point` with group `index` at `count` kept, its writers' kinds fitted to their new widths; None when a
        writer has no kind allowed there."""
        groups, kinds = self.problem.groups, point.kind_of
        moved = replace(point, kept=with_count(point.kept, index, count))
        for name in groups.groups[index].producers:
            table = self.problem.layers[name]
            width = groups.out_width(name, moved.kept)
            if table.allows(kinds[name], width):
                continue
            allowed = [k for k in table.sensitivity if table.allows(k, width)]
            if not allowed:
                return None
            moved = moved.with_kind(name, min(allowed, key=table.sensitivity.__getitem__))
        return moved

    def solve(self, target_ms: float) -> Solution:
        point = self.dense()
        ms, cost = self.predict(point), self.cost(point)
        while ms > target_ms:
            best: tuple[float, float, Point] | None = None
            for moved in self.moves(point):
                gain = ms - self.predict(moved)
                if gain <= 0:
                    continue
                rank = ((self.cost(moved) - cost) / gain, -gain)
                if best is None or rank < best[:2]:
                    best = (*rank, moved)
            if best is None:  # nothing makes it faster: unreachable; the fastest point found
                fastest = min((point, self._fastest()), key=self.predict)
                return Solution(fastest, self.predict(fastest), self.cost(fastest), target_ms, reached=False)
            point = best[2]
            ms, cost = self.predict(point), self.cost(point)
        return self._undo_unneeded(point, target_ms)

    def _fastest(self) -> Point:
        """The point a walk for speed alone reaches from the dense model: the move that saves the most, until
        none saves anything."""
        point = self.dense()
        while True:
            ms = self.predict(point)
            faster = [(self.predict(m), m) for m in self.moves(point)]
            best = min(faster, key=lambda pm: pm[0], default=None)
            if best is None or best[0] >= ms:
                return point
            point = best[1]

    def _undo_unneeded(self, point: Point, target_ms: float) -> Solution:
        """Take back, costliest first, the moves whose saving the target no longer needs."""
        cost = self.cost(point)
        while True:
            cheaper = [(self.cost(m), m) for m in self.moves(point)]
            fitting = [(c, m) for c, m in cheaper if c < cost and self.predict(m) <= target_ms]
            if not fitting:
                return Solution(point, self.predict(point), cost, target_ms, reached=True)
            cost, point = min(fitting, key=lambda cm: cm[0])
