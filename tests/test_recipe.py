import pytest
import yaml

from slimkit.errors import RecipeError
from slimkit.recipe import Recipe, bundled_recipes, normalized_yaml


def errors_of(data) -> str:
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(data)
    return str(info.value)


def test_valid_recipe_round_trips_through_yaml(digits_recipe):
    recipe = Recipe.from_dict(digits_recipe)
    again = Recipe.from_dict(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe
    assert again.stages[0].sparsity == 0.8
    assert again.stages[0].kind == "prune"


def test_misspelt_key_names_path_value_and_suggestion(digits_recipe):
    digits_recipe["stages"][0]["prune"]["sparsty"] = 0.9
    message = errors_of(digits_recipe)
    assert "'stages[0].prune.sparsty': unknown key (value 0.9)" in message
    assert "did you mean 'sparsity'?" in message
    assert "Allowed keys:" in message and "initial_sparsity" in message


def test_misspelt_top_level_key(digits_recipe):
    digits_recipe["trian"] = {"epochs": 3}
    message = errors_of(digits_recipe)
    assert "'trian': unknown key" in message and "did you mean 'train'?" in message


def test_unknown_method_lists_allowed_methods(digits_recipe):
    digits_recipe["stages"][0]["prune"]["method"] = "magic"
    message = errors_of(digits_recipe)
    assert "'stages[0].prune.method': unknown method 'magic'" in message
    assert "allowed: gmp, magnitude" in message


@pytest.mark.parametrize("bad", [1.0, 1.5, -0.1])
def test_sparsity_outside_unit_interval(digits_recipe, bad):
    digits_recipe["stages"][0]["prune"]["sparsity"] = bad
    message = errors_of(digits_recipe)
    assert f"'stages[0].prune.sparsity': invalid value {bad!r}" in message
    assert "less than 1" in message or "greater than or equal to 0" in message


def test_unknown_stage_kind_model_and_data(digits_recipe):
    digits_recipe["stages"].append({"squeeze": {"method": "x"}})
    digits_recipe["model"]["name"] = "resnet99"
    digits_recipe["data"]["name"] = "imagenet"
    message = errors_of(digits_recipe)
    # every problem is reported at once
    assert "'stages[1]': unknown stage kind 'squeeze'; allowed: prune, channels" in message
    assert "'model.name': invalid value 'resnet99'" in message and "resnet20" in message
    assert "'data.name': invalid value 'imagenet'" in message and "fashion_mnist" in message


def test_unknown_model_option(digits_recipe):
    digits_recipe["model"]["options"] = {"blocks": "bireal"}
    message = errors_of(digits_recipe)
    assert "model 'lenet' has no option blocks" in message


def test_stage_window_beyond_training(digits_recipe):
    digits_recipe["stages"][0]["prune"]["end_epoch"] = 40
    assert "'stages[0].prune.end_epoch': 40 is beyond train.epochs (4)" in errors_of(digits_recipe)


def test_overrides_apply_before_validation(tmp_path, digits_recipe):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(digits_recipe))
    recipe = Recipe.load(path, ["train.epochs=7", "stages.0.prune.sparsity=0.5", "data.batch_size=32"])
    assert (recipe.train.epochs, recipe.stages[0].sparsity, recipe.data.batch_size) == (7, 0.5, 32)
    with pytest.raises(RecipeError, match=r"'train\.epohcs': unknown key"):
        Recipe.load(path, ["train.epohcs=3"])
    with pytest.raises(RecipeError, match="not an index"):
        Recipe.load(path, ["stages.5.prune.sparsity=0.5"])


def test_unknown_recipe_name_lists_bundled():
    with pytest.raises(RecipeError, match="bundled: demo"):
        Recipe.load("no-such-recipe")


@pytest.mark.parametrize("name", bundled_recipes())
def test_bundled_recipes_validate(name):
    recipe = Recipe.load(name)
    assert recipe.name == name
    assert normalized_yaml(recipe.to_yaml()) == recipe.to_yaml()  # what a resume compares with its record


def test_a_target_with_default_lists_reads_back_as_written(digits_recipe):
    # the defaults are validated (sorted, widest first) like a written list, so a resumed target run's recipe
    # equals its checkpoint's record; it once read [0.5, 0.75, 0.9] back as [0.9, 0.75, 0.5] and refused
    recipe = Recipe.from_dict({**digits_recipe, "stages": [], "target": {"speedup": 2.0}})
    assert recipe.target.sparsities == [0.9, 0.75, 0.5] and recipe.target.widths == [0.75, 0.5, 0.25]
    assert normalized_yaml(recipe.to_yaml()) == recipe.to_yaml()
