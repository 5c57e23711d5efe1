"""The latency-target solver on synthetic tables: it reaches the target at the least loss of every point that
does (checked by enumerating them all), keeps one width per channel group, never takes a form that measured
slower than the layer's dense form, and reports an unreachable target as such with the fastest point."""

from __future__ import annotations

import itertools

import pytest

from slimkit.target.cache import Timing
from slimkit.target.groups import ChannelGroup, ChannelGroups
from slimkit.target.solver import LayerTable, Point, Problem, Solver

# a chain a -> b -> c: a writes group 0 (read by b), b writes group 1 (read by c); c is the classifier
OUT = {"a": 16, "b": 16, "c": 10}
IN = {"a": 3, "b": 16, "c": 16}


def _table(times: dict[str, dict[int, float]], sensitivity: dict[str, float], layer: str) -> LayerTable:
    return LayerTable({k: {w: Timing(ms, ms / 20) for w, ms in by_width.items()} for k, by_width in times.items()},
                      OUT[layer], IN[layer], sensitivity)


def _problem(groups: list[ChannelGroup] | None = None, b_int8_ms: float = 1.0) -> Problem:
    groups = groups if groups is not None else [
        ChannelGroup({"a": 1}, {"b": 1}, 16, (16, 8)), ChannelGroup({"b": 1}, {"c": 1}, 16, (16, 8))]
    layers = {
        "a": _table({"fp32": {16: 2.0, 8: 1.2}, "int8": {16: 1.5, 8: 1.0}}, {"fp32": 0, "int8": 0.02}, "a"),
        "b": _table({"fp32": {16: 4.0, 8: 2.2}, "int8": {16: b_int8_ms, 8: b_int8_ms * 0.6},
                     "sparse_int8@0.75": {16: 1.6}}, {"fp32": 0, "int8": 0.01, "sparse_int8@0.75": 0.05}, "b"),
        "c": _table({"fp32": {10: 0.5}, "int8": {10: 0.4}}, {"fp32": 0, "int8": 0.001}, "c"),
    }
    return Problem(layers, ChannelGroups(groups, OUT, IN), [{16: 0.0, 8: 0.1}] * len(groups), network_ms=8.0)


def _every_point(problem: Problem) -> list[Point]:
    """Every point whose forms the tables allow (brute force: the independent reference)."""
    names = list(problem.layers)
    points = []
    for kept in itertools.product(*[g.choices for g in problem.groups.groups]):
        per_layer = [[k for k in problem.layers[n].sensitivity
                      if problem.layers[n].allows(k, problem.groups.out_width(n, kept))] for n in names]
        for kinds in itertools.product(*per_layer):
            points.append(Point(tuple(zip(names, kinds, strict=True)), tuple(kept)))
    return points


def _by_hand(problem: Problem, point: Point) -> float:
    """The prediction written out: the network, plus each layer's form at its widths, minus its dense time."""
    total = problem.network_ms
    for name, kind in point.kinds:
        table, kept = problem.layers[name], point.kept
        out_w, in_w = problem.groups.out_width(name, kept), problem.groups.in_width(name, kept)
        total += table.times[kind][out_w].median * in_w / table.in_channels - table.times["fp32"][OUT[name]].median
    return total


@pytest.mark.parametrize("speedup", [1.1, 1.3, 1.7, 2.0])
def test_the_target_is_reached_at_the_least_loss_of_every_point_that_reaches_it(speedup):
    problem = _problem()
    solver = Solver(problem)
    target = problem.network_ms / speedup
    solution = solver.solve(target)
    assert solution.reached and solution.predicted_ms <= target
    assert solution.predicted_ms == pytest.approx(_by_hand(problem, solution.point))
    fitting = [p for p in _every_point(problem) if _by_hand(problem, p) <= target]
    assert solution.sensitivity == pytest.approx(min(solver.cost(p) for p in fitting))


def test_no_single_move_saves_loss_and_still_reaches_the_target():
    problem = _problem()
    solver = Solver(problem)
    solution = solver.solve(problem.network_ms / 1.5)
    for moved in solver.moves(solution.point):
        assert solver.cost(moved) >= solution.sensitivity or solver.predict(moved) > solution.target_ms


def test_a_form_slower_than_the_layers_dense_form_is_never_chosen():
    problem = _problem(b_int8_ms=5.0)  # b in int8 takes longer than in fp32 (4.0), at almost no loss
    solver = Solver(problem)
    assert not problem.layers["b"].allows("int8", 16)
    for speedup in (1.05, 1.2, 1.5, 2.0, 5.0):
        point = solver.solve(problem.network_ms / speedup).point
        for name, kind in point.kinds:
            table = problem.layers[name]
            width = problem.groups.out_width(name, point.kept)
            assert (kind == "fp32" and width == OUT[name]) or table.ms(kind, width) < table.dense_ms


def test_a_residual_group_keeps_one_width_for_every_layer_that_writes_it():
    stream = ChannelGroup({"a": 1, "b": 1}, {"b": 1, "c": 1}, 16, (16, 8))  # a and b both write one stream
    problem = _problem([stream])
    solution = Solver(problem).solve(problem.network_ms / 2.4)
    assert solution.reached and solution.point.kept == (8,)
    widths = problem.groups.widths(solution.point.kept)
    assert widths == {"a": 8, "b": 8}


def test_an_unreachable_target_is_refused_with_the_fastest_point():
    problem = _problem()
    solver = Solver(problem)
    solution = solver.solve(problem.network_ms / 100)
    assert not solution.reached
    fastest = min(_by_hand(problem, p) for p in _every_point(problem))
    assert solution.predicted_ms == pytest.approx(fastest)
    assert solution.predicted_ms > solution.target_ms


def test_interpolated_widths_lie_between_the_measured_ones_and_sparse_forms_keep_their_width():
    table = _problem().layers["b"]
    assert table.ms("fp32", 12) == pytest.approx(3.1)
    assert table.ms("fp32", 4) == pytest.approx(1.1)  # below the narrowest measured: in proportion
    assert table.ms("sparse_int8@0.75", 8) is None and table.ms("sparse_int8@0.75", 16) == 1.6


def test_layers_timed_alone_never_account_for_more_than_the_network():
    problem = _problem()
    inflated = Problem(problem.layers, problem.groups, problem.group_sensitivity, network_ms=3.25)  # layers sum 6.5
    solver = Solver(inflated)
    assert solver.scale == 0.5
    fastest = min(_every_point(inflated), key=solver.predict)
    assert solver.predict(fastest) == pytest.approx(3.25 + 0.5 * (_by_hand(problem, fastest) - 8.0))
    assert all(solver.predict(p) > 0 for p in _every_point(inflated))
    solution = solver.solve(3.25 / 1.5)
    assert solution.reached and solution.predicted_ms <= 3.25 / 1.5
