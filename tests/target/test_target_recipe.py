"""The target in the recipe, the API and the CLI, and the per-layer recipe it writes: an ordinary recipe that
round-trips as YAML; a target with stages, or one the solver cannot reach, is refused by name."""

from __future__ import annotations

import json

import pytest
import yaml

import slimkit.pipeline
from slimkit.cli import main
from slimkit.errors import RecipeError
from slimkit.recipe import Recipe
from slimkit.target.choose import TargetChoice
from slimkit.target.forms import LayerKind, form_stages
from slimkit.target_recipe import CHOSEN_RECIPE, TARGET_FILE, TargetUnreachableError, chosen_recipe, targeted_recipe

RECIPE = {"name": "t", "model": {"name": "lenet", "width": 0.5}, "data": {"name": "digits", "batch_size": 32},
          "baseline": {"epochs": 1}, "train": {"epochs": 3}}


def _targeted(**target) -> Recipe:
    return Recipe.from_dict({**RECIPE, "target": {"speedup": 2, **target}})


def test_the_target_section_round_trips_and_recipes_without_one_read_as_before(tmp_path):
    recipe = _targeted(batch=8, threads=2, baseline="openvino_int8", max_accuracy_drop=0.01, binary="xnor",
                       widths=[0.5, 0.25], round_to=16, sparsities=[0.9])
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe.to_yaml())
    assert Recipe.load(path).to_yaml() == recipe.to_yaml() and Recipe.load(path).target == recipe.target
    assert "target" not in Recipe.from_dict(RECIPE).to_dict()


@pytest.mark.parametrize("edit, message", [
    ({"stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}]}, "gets its stages from the target"),
    ({"target": {"speedup": 1.0}}, "target.speedup"),
    ({"target": {"speedup": 2, "binary": "sign"}}, "not a binarize method"),
    ({"target": {"speedup": 2, "widths": [1.5]}}, "strictly between 0 and 1"),
    ({"target": {"speedup": 2, "round_to": 12}}, "target.round_to"),
])
def test_a_target_that_cannot_be_meant_is_refused_by_key(edit, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict({**RECIPE, "target": {"speedup": 2}, **edit})


def test_the_per_layer_recipe_is_an_ordinary_recipe_that_round_trips(tmp_path):
    kinds = {"features.0": LayerKind("int8"), "features.3": LayerKind("sparse_int8", 0.75),
             "classifier.0": LayerKind("sparse_int8", 0.75), "classifier.2": LayerKind("int8")}
    stages = form_stages(kinds, {"features.0": 8, "features.3": 16}, binary=None, quantize_epoch=2)
    chosen = chosen_recipe(_targeted(batch=4), stages)
    path = tmp_path / CHOSEN_RECIPE
    path.write_text(chosen.to_yaml())
    loaded = Recipe.load(path)
    assert loaded.to_yaml() == chosen.to_yaml() and loaded.target is None
    assert [s.kind for s in loaded.stages] == ["channels", "prune", "quantize"]
    channels, prune, quantize = loaded.stages
    assert channels.widths == {"features.0": 8, "features.3": 16} and channels.ratio == 0
    assert prune.sparsity == 0.75 and prune.block == 4 and prune.layers.include == ["features.3", "classifier.0"]
    assert quantize.layers.include == list(kinds) and quantize.first_last_bits is None and quantize.start_epoch == 2
    assert loaded.measure.engines and loaded.measure.batch_sizes == [4]


def test_the_cli_option_sets_the_target_and_lets_it_choose_the_stages(tmp_path, monkeypatch, capsys):
    seen = []

    def run_recipe(recipe, out_dir, **kwargs):
        seen.append(recipe)
        raise SystemExit(0)

    monkeypatch.setattr(slimkit.pipeline, "run_recipe", run_recipe)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}]}))
    with pytest.raises(SystemExit):
        main(["run", str(path), "--target-speedup", "2", "target.batch=4", "--out", str(tmp_path / "run")])
    (recipe,) = seen
    assert recipe.target.speedup == 2 and recipe.target.batch == 4 and recipe.stages == []
    assert "replaced by the forms the target chooses" in " ".join(capsys.readouterr().out.split())


def test_an_unreachable_target_stops_the_run_with_the_fastest_point(tmp_path, monkeypatch):
    section = {"reached": False, "baseline": "openvino_int8", "predicted_ms": 1.5, "predicted_speedup": 1.3,
               "layers": []}
    monkeypatch.setattr("slimkit.target.choose.choose", lambda *a, **k: TargetChoice([], section))
    recipe = _targeted()
    data = slimkit.pipeline.load_data(recipe.data)
    unreachable = r"fastest point found is predicted at 1\.500 ms, 1\.30x"
    with pytest.raises(TargetUnreachableError, match=unreachable) as caught:
        targeted_recipe(recipe, None, data, recipe.objective.build(), [1, 8, 8], tmp_path, resume=False)
    assert caught.value.section == section
    assert json.loads((tmp_path / TARGET_FILE).read_text())["section"] == section
    assert not (tmp_path / CHOSEN_RECIPE).exists()
