"""benchmarks/target.py's pure parts: its recipes parse (the target runs and every uniform one), and the uniform
recipe it compares a target run with is the most accurate one at least as fast, measured."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from slimkit.recipe import Recipe

BENCH = Path(__file__).parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))


def _module():
    spec = importlib.util.spec_from_file_location("bench_target", BENCH / "target.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("smoke", [False, True])
def test_every_recipe_it_runs_parses(smoke):
    bench = _module()
    for arch in bench.ARCHS:
        recipe = bench.base_recipe(arch, "x", smoke)
        Recipe.from_dict({**recipe, "target": {"speedup": 2, "batch": bench.BATCH}})
        for spec in bench.UNIFORM.values():
            Recipe.from_dict({**recipe, "stages": bench.uniform_stages(spec, recipe["train"]["epochs"])})


def test_the_comparison_is_the_most_accurate_uniform_run_at_least_as_fast():
    bench = _module()
    uniform = [{"arch": "a", "recipe": "slow", "speedup": 1.2, "noise": 0.05, "accuracy": 0.95},
               {"arch": "a", "recipe": "fast", "speedup": 2.1, "noise": 0.05, "accuracy": 0.80},
               {"arch": "a", "recipe": "fast-in-noise", "speedup": 1.9, "noise": 0.15, "accuracy": 0.85},
               {"arch": "b", "recipe": "other model", "speedup": 5.0, "noise": 0.0, "accuracy": 0.99}]
    assert bench.same_speed({"arch": "a", "speedup": 2.0}, uniform)["recipe"] == "fast-in-noise"
    assert bench.same_speed({"arch": "a", "speedup": 3.0}, uniform) is None
