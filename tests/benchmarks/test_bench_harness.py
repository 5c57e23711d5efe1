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


from scipy import stats as scipy_stats  # noqa: E402

import binary_claims  # noqa: E402
import harness  # noqa: E402
import plots  # noqa: E402
import verdicts  # noqa: E402

Claim = verdicts.Claim


def _load(name: str):
    """benchmarks/<name>.py under another module name (tests/sparsity and tests/binary are folders here)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rows(group: str, accs: list[float], first_seed: int = 0) -> list[dict]:
    return [{"group": group, "seed": first_seed + i, "test_acc": acc / 100} for i, acc in enumerate(accs)]


def judge(better: list[float], worse: list[float], worse_first_seed: int = 0):
    stats = verdicts.group_stats(rows("a", better) + rows("b", worse, worse_first_seed))
    return verdicts.verdict(Claim("a > b", "a", "b", "paper"), stats)


def test_group_stats_mean_range_and_seeds_in_points():
    stats = verdicts.group_stats(rows("a", [80.0, 84.0, 82.0]))["a"]
    assert stats.mean == pytest.approx(82.0) and (stats.low, stats.high) == pytest.approx((80.0, 84.0))
    assert stats.seeds == (0, 1, 2) and stats.text() == "82.00 (80.00-84.00, 3 seeds)"


def test_the_paired_interval_is_students_on_the_per_seed_differences():
    # differences 2, 4, 3: mean 3, s = 1, t(0.975, 2) = 4.302653 (tables): 3 +- 4.302653 / sqrt(3)
    v = judge([82.0, 84.0, 83.0], [80.0, 80.0, 80.0])
    half = 4.302653 / math.sqrt(3)
    assert v.method == "paired" and v.gap == pytest.approx(3.0)
    assert v.interval == pytest.approx((3.0 - half, 3.0 + half), abs=1e-5) and v.status == "reproduced"
    v = judge([82.0, 84.0, 83.0], [80.0, 84.0, 80.0])  # differences 2, 0, 3: the interval holds 0
    assert v.status == "not resolved" and v.reason == "the interval holds 0" and v.interval[0] < 0 < v.interval[1]
    a, b = [82.0, 84.0, 83.0, 82.5], [80.0, 80.0, 80.0, 80.5]  # scipy's own paired test agrees
    reference = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert judge(a, b).interval == pytest.approx((reference.low, reference.high))
    assert judge(a, b).status == "reproduced" and judge(b, a).status == "contradicted"


def test_a_published_minimum_effect_must_be_cleared_by_the_whole_interval():
    stats = verdicts.group_stats(rows("a", [82.0, 84.0, 83.0]) + rows("b", [80.0, 80.0, 80.0]))
    low = 3.0 - 4.302653 / math.sqrt(3)  # 0.516: differences 2, 4, 3 as above
    assert verdicts.verdict(Claim("a > b", "a", "b", "p", min_effect=0.5), stats).status == "reproduced"
    v = verdicts.verdict(Claim("a > b", "a", "b", "p", min_effect=1.0), stats)
    assert v.status == "not resolved" and v.interval[0] == pytest.approx(low, abs=1e-5)
    assert v.reason == "the interval reaches below the published minimum effect of 1 pts"
    assert verdicts.expected_orderings([Claim("a > b", "a", "b", "P", min_effect=1.0)]) == (
        "- a > b (P; minimum effect 1 pts)")


def test_different_seeds_get_welchs_interval():
    a, b = [82.0, 84.0, 83.0], [80.0, 79.0, 80.5, 81.0]
    v = judge(a, b, worse_first_seed=10)
    reference = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert v.method == "Welch" and v.interval == pytest.approx((reference.low, reference.high))
    assert v.status == ("reproduced" if reference.low > 0 else "not resolved")


def test_fewer_than_three_seeds_and_missing_rows_are_never_resolved():
    v = judge([90.0, 90.1], [50.0, 51.0])
    assert v.status == "not resolved" and v.reason == "2 seed(s); the rule needs 3" and v.gap == pytest.approx(39.55)
    stats = verdicts.group_stats(rows("a", [80.0, 81.0, 82.0]))
    v = verdicts.verdict(Claim("a > b", "a", "b", "paper"), stats)
    assert v.status == "not measured" and v.reason == "no rows for b"


def test_the_rules_simulated_error_rates():
    # a true null is called resolved at the interval's 5%, at any seed count (Monte Carlo: 20,000 trials)
    for seeds in (3, 5):
        assert 0.04 < verdicts.simulated_error_rates(seeds, 0.0) < 0.06
    # the power at a true gap of 2 sigma: the noncentral t's, computed independently
    for seeds in (3, 5):
        df, shift = seeds - 1, 2 / math.sqrt(2 / seeds)  # d ~ N(2 sigma, 2 sigma^2), n seeds
        power = scipy_stats.nct.sf(scipy_stats.t.ppf(0.975, df), df, shift)
        assert verdicts.simulated_error_rates(seeds, 2.0) == pytest.approx(power, abs=0.015)
    assert verdicts.simulated_error_rates(5, 2.0) > verdicts.simulated_error_rates(3, 2.0)  # more seeds: surer


def test_claims_table_renders_one_line_per_claim():
    stats = verdicts.group_stats(rows("a", [80.0, 81.0, 82.0]) + rows("b", [70.0, 71.0, 71.0]) + rows("c", [75.0]))
    claims = [Claim("A > B", "a", "b", "Paper 1, Table 2"), Claim("C > A", "c", "a", "Paper 2", "setting differs"),
              Claim("A > D", "a", "d", "Paper 3")]
    lines = verdicts.claims_table(claims, stats).splitlines()
    assert lines[0].startswith("| paper claim | source | ours: claimed better | ours: claimed worse | gap (pts) |")
    low, high = verdicts.verdict(claims[0], stats).interval
    assert lines[2] == ("| A > B | Paper 1, Table 2 | 81.00 (80.00-82.00, 3 seeds) | 70.67 (70.00-71.00, 3 seeds) "
                        f"| +10.33 | {low:+.2f} to {high:+.2f} (paired) | **reproduced** |")
    assert lines[3] == ("| C > A | Paper 2. setting differs | 75.00 (1 seed) | 81.00 (80.00-82.00, 3 seeds) | -6.00 "
                        "| - | **not resolved** (1 seed(s); the rule needs 3) |")
    assert lines[4] == ("| A > D | Paper 3 | 81.00 (80.00-82.00, 3 seeds) | - | - | - | **not measured** (no rows "
                        "for d) |")
    assert verdicts.expected_orderings(claims[1:2]) == "- C > A (Paper 2; setting differs)"


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
    groups = set(binary.suite_groups(binary.METHODS, True))
    for claim in binary.CLAIMS:
        assert {claim.better, claim.worse} <= groups, claim
    for method in ["fp", *binary.METHODS]:
        name, recipe, _ = binary.binary_recipe(method, seed=1, overrides=[])
        assert name == ("xnor-fashion" if method == "fp" else f"{method}-fashion")
        assert recipe["data"]["classes"] == [0, 2, 4, 6] and recipe["train"]["epochs"] == binary.EPOCHS
        assert recipe["seed"] == 1 and (recipe["stages"] == []) == (method == "fp")
    _, recipe, _, record = binary.group_recipe(binary_claims.theta_group("pi/4"), 0, [])
    assert recipe["stages"][0]["binarize"][binary.THETA_OPTION] == pytest.approx(math.pi / 4)
    assert record["of"] == "rbnn" and recipe["name"] == "rbnn-theta0.7854-s0"


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
