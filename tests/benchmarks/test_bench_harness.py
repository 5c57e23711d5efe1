"""The pure parts of the benchmark scripts: the claim verdicts with their seed-spread rule, the tables they
render, the rows they merge, the epoch rescaling, and that each suite's published claims name configurations
it runs and its recipes still parse."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))  # the scripts import harness and plots as top-level modules


import harness  # noqa: E402
import plots  # noqa: E402

Claim = harness.Claim


def _load(name: str):
    """benchmarks/<name>.py under another module name (tests/sparsity and tests/binary are folders here)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rows(group: str, accs: list[float]) -> list[dict]:
    return [{"group": group, "seed": seed, "test_acc": acc / 100} for seed, acc in enumerate(accs)]


def judge(better: list[float], worse: list[float]):
    stats = harness.group_stats(rows("a", better) + rows("b", worse))
    return harness.verdict(Claim("a > b", "a", "b", "paper"), stats)


def test_group_stats_mean_range_and_seeds_in_points():
    stats = harness.group_stats(rows("a", [80.0, 84.0, 82.0]))["a"]
    assert stats.mean == pytest.approx(82.0) and (stats.low, stats.high) == pytest.approx((80.0, 84.0))
    assert stats.range == pytest.approx(4.0) and stats.seeds == (0, 1, 2)
    assert stats.text() == "82.00 (80.00-84.00, 3 seeds)"


def test_verdict_reproduced_contradicted_and_not_resolved():
    v = judge([80.0, 81.0], [70.0, 71.0])
    assert (v.status, v.gap, v.spread) == ("reproduced", pytest.approx(10.0), pytest.approx(1.0))
    v = judge([70.0, 71.0], [80.0, 80.5])
    assert v.status == "contradicted" and v.gap == pytest.approx(-9.75)
    v = judge([80.0, 84.0], [79.0, 80.0])  # gap 2.5, spread 4: inside 2 x 4
    assert v.status == "not resolved" and v.reason == "gap within twice the seed spread"


def test_verdict_needs_more_than_twice_the_larger_range():
    # gap exactly 2 x spread is not resolved; a hair more is
    assert judge([80.0, 81.0], [78.0, 79.0]).status == "not resolved"
    assert judge([80.0, 81.0], [78.0, 78.9]).status == "reproduced"
    # the spread is the larger of the two ranges (3 here, not 0.2): a gap of 2.6 is not resolved
    v = judge([80.0, 80.2], [76.0, 79.0])
    assert v.spread == pytest.approx(3.0) and v.status == "not resolved"
    # and the same gap against the opposite claim is not a contradiction either
    assert judge([76.0, 79.0], [80.0, 80.2]).status == "not resolved"
    # seeds that agree exactly resolve any non-zero gap; a zero gap never is
    assert judge([80.0, 80.0], [79.9, 79.9]).status == "reproduced"
    assert judge([80.0, 80.0], [80.0, 80.0]).status == "not resolved"


def test_verdict_one_seed_and_missing_rows():
    v = judge([90.0], [50.0, 51.0])
    assert v.status == "not resolved" and "1 seed(s)" in v.reason and v.gap == pytest.approx(39.5)
    stats = harness.group_stats(rows("a", [80.0, 81.0]))
    v = harness.verdict(Claim("a > b", "a", "b", "paper"), stats)
    assert v.status == "not measured" and v.reason == "no rows for b"


def test_claims_table_renders_one_line_per_claim():
    stats = harness.group_stats(rows("a", [80.0, 81.0]) + rows("b", [70.0, 71.0]) + rows("c", [75.0]))
    claims = [Claim("A > B", "a", "b", "Paper 1, Table 2"), Claim("C > A", "c", "a", "Paper 2", "setting differs"),
              Claim("A > D", "a", "d", "Paper 3")]
    lines = harness.claims_table(claims, stats).splitlines()
    assert lines[0].startswith("| paper claim | source | ours: claimed better | ours: claimed worse | gap (pts) |")
    assert lines[2] == ("| A > B | Paper 1, Table 2 | 80.50 (80.00-81.00, 2 seeds) | 70.50 (70.00-71.00, 2 seeds) "
                        "| +10.00 | 2.00 | **reproduced** |")
    assert lines[3] == ("| C > A | Paper 2. setting differs | 75.00 (1 seed) | 80.50 (80.00-81.00, 2 seeds) | -5.50 "
                        "| 2.00 | **not resolved** (1 seed(s); the rule needs 2) |")
    assert lines[4] == ("| A > D | Paper 3 | 80.50 (80.00-81.00, 2 seeds) | - | - | - | **not measured** (no rows "
                        "for d) |")
    assert harness.expected_orderings(claims[1:2]) == "- C > A (Paper 2; setting differs)"


def test_merge_rows_replaces_only_the_same_group_and_seed():
    earlier = rows("a", [1.0, 2.0]) + rows("b", [3.0])
    new = [{"group": "a", "seed": 1, "test_acc": 0.5}, {"group": "c", "seed": 0, "test_acc": 0.6}]
    merged = harness.merge_rows(earlier, new)
    assert [(r["group"], r["seed"], r["test_acc"]) for r in merged] == [
        ("a", 0, 0.01), ("b", 0, 0.03), ("a", 1, 0.5), ("c", 0, 0.6)]


def test_set_epochs_keeps_the_schedule_shape():
    recipe = {"train": {"epochs": 6, "warmup_epochs": 0.03, "milestones": [2, 3, 5]},
              "stages": [{"prune": {"start_epoch": 2, "end_epoch": 8 // 2}}, {"binarize": {"start_epoch": 0}}]}
    moved = harness.set_epochs(recipe, 20)
    assert recipe["train"] == {"epochs": 20, "warmup_epochs": 0.1, "milestones": [7, 10, 17]}
    assert recipe["stages"][0]["prune"] == {"start_epoch": 7, "end_epoch": 13}
    assert moved == {"train.warmup_epochs": [0.03, 0.1], "train.milestones": [[2, 3, 5], [7, 10, 17]],
                     "stages.0.prune.start_epoch": [2, 7], "stages.0.prune.end_epoch": [4, 13]}
    short = {"train": {"epochs": 12}, "stages": [{"prune": {"start_epoch": 2, "end_epoch": 8}}]}
    harness.set_epochs(short, 2)  # a window never collapses or leaves the run
    assert short["stages"][0]["prune"] == {"start_epoch": 0, "end_epoch": 1}
    same = {"train": {"epochs": 6, "milestones": [2]}, "stages": []}
    assert harness.set_epochs(same, 6) == {} and same["train"]["milestones"] == [2]


def test_recipe_digest_ignores_key_order():
    assert harness.recipe_digest({"a": 1, "b": [1, 2]}) == harness.recipe_digest({"b": [1, 2], "a": 1})
    assert harness.recipe_digest({"a": 1}) != harness.recipe_digest({"a": 2})


def test_sparsity_suite_claims_name_configurations_it_runs_and_its_recipes_parse():
    from slimkit.recipe import Recipe

    sparsity = _load("sparsity")
    groups = {"dense"} | {f"{m} {sparsity.pct(s)}" for m in sparsity.RESNET_METHODS for s in sparsity.RESNET_SPARSITIES}
    for claim in sparsity.RESNET_CLAIMS:
        assert {claim.better, claim.worse} <= groups, claim
    for method in sparsity.RESNET_METHODS:
        for s in sparsity.RESNET_SPARSITIES:
            _, recipe, _ = sparsity.resnet_recipe(method, s, seed=1, overrides=[])
            parsed = Recipe.from_dict(recipe)
            stage = parsed.stages[0]
            assert parsed.seed == 1 and parsed.model.name == "resnet20" and parsed.model.width == 0.5
            assert stage.sparsity == s and parsed.train.epochs == sparsity.RESNET_EPOCHS
            assert parsed.data.train_subset == sparsity.RESNET_SUBSET
            if stage.scope == "global":
                assert stage.max_layer_sparsity is not None
    assert sparsity.resnet_recipe("gmp-layer", 0.95, 0, [])[1]["stages"][0]["prune"]["scope"] == "layer"
    assert sparsity.resnet_recipe("gmp-global", 0.95, 0, [])[1]["stages"][0]["prune"]["scope"] == "global"
    assert sparsity.resnet_recipe("dense", None, 0, [])[1]["stages"] == []


def test_binary_claims_name_configurations_it_runs_and_its_recipes_parse():
    binary = _load("binary")
    groups = {"fp", *binary.METHODS} | {binary.theta_group(t) for t in binary.THETAS}
    for claim in binary.CLAIMS:
        assert {claim.better, claim.worse} <= groups, claim
    for method in ["fp", *binary.METHODS]:
        name, recipe, _ = binary.binary_recipe(method, seed=1, overrides=[])
        assert name == ("xnor-fashion" if method == "fp" else f"{method}-fashion")
        assert recipe["data"]["classes"] == [0, 2, 4, 6] and recipe["train"]["epochs"] == binary.EPOCHS
        assert recipe["seed"] == 1 and (recipe["stages"] == []) == (method == "fp")
    if binary.theta_option_exists():
        _, recipe, _ = binary.binary_recipe("rbnn", 0, [], theta=math.pi / 4)
        assert recipe["stages"][0]["binarize"][binary.THETA_OPTION] == pytest.approx(math.pi / 4)


def test_accuracy_plot_and_runtime_points(tmp_path):
    points = [plots.Point("95%", 1e5, 80.0, 79.0, 81.0, series="gmp"),
              plots.Point("dense", 1e6, 85.0, 84.5, 85.5, series="dense", reference=True)]
    path = plots.accuracy_plot([("suite", "MACs", points), ("empty", "MACs", [])], tmp_path / "a.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots._base_form("sparse90 + BN folded") == ("sparse90", "+ BN folded")
    assert plots._base_form("channels50 in ort_int8") == ("channels50", "in ort_int8")
    assert plots._base_form("bnn") == ("bnn", "eager deployed")
    (tmp_path / "channels.json").write_text(json.dumps({"rows": [
        {"arch": "resnet20", "ratio": 0.5, "scope": "global", "run": "gfbs-0.5", "test_acc": [0.86, 0.83]}]}))
    runtime = {"rows": [{"arch": "resnet20", "form": form, "batch": 1,
                         "vs": {"best_dense": {"baseline": "openvino_int8", "speedup": speed}}}
                        for form, speed in (("channels50", 0.3), ("channels50 in openvino_int8", 1.3),
                                            ("pattern", 0.2))]}
    sources = {}
    found, missing = plots.runtime_points(runtime, tmp_path, batch=1, sources=sources)
    assert [(p.label, round(p.x, 6), p.mean, p.series) for p in found] == [
        ("R20 channels50", -3.0, 0.3, "eager deployed"), ("R20 channels50", -3.0, 1.3, "in openvino_int8")]
    assert missing == ["resnet20 pattern"]
    assert sources == {"R20 channels50": "channels.json resnet20 gfbs-0.5 (GFBS, global scope): 83.00% vs 86.00%"}
