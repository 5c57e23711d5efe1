"""measure.hardware in recipes: key-path errors, defaults, the bundled sense-systolic recipe, and models the
cost models refuse by name."""

import pytest
import torch
from torch import nn

from slimkit.errors import RecipeError, SlimkitError
from slimkit.hardware import HardwareConfig, SystolicConfig, trace_layers
from slimkit.recipe import Recipe


def _with_hardware(digits_recipe, hardware):
    return {**digits_recipe, "measure": {**digits_recipe["measure"], "hardware": hardware}}


def test_defaults_are_documented_values():
    config = HardwareConfig(systolic={})
    assert (config.systolic.rows, config.systolic.cols, config.systolic.dataflow) == (8, 8, "weight_stationary")
    assert config.lut is None and config.arithmetic is None


def test_misspelt_key_names_path_value_and_suggestion(digits_recipe):
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict(_with_hardware(digits_recipe, {"systolic": {"rowz": 16}}))
    message = str(err.value)
    assert "'measure.hardware.systolic.rowz': unknown key (value 16); did you mean 'rows'?" in message


def test_bad_values_name_path_value_and_what_is_allowed(digits_recipe):
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict(_with_hardware(digits_recipe, {"systolic": {"rows": 0, "dataflow": "row_stationary"},
                                                        "lut": {"max_table_bits": True}}))
    message = str(err.value)
    assert "'measure.hardware.systolic.rows': invalid value 0" in message and "greater than or equal to 1" in message
    assert "'measure.hardware.systolic.dataflow': invalid value 'row_stationary'" in message
    assert "'weight_stationary' or 'output_stationary'" in message
    assert "'max_table_bits': True is a boolean" in message


def test_a_unit_cost_table_entry_must_be_complete(digits_recipe):
    key = r"'measure\.hardware\.arithmetic\.units\.int_add\[8\]\.area_um2'"
    with pytest.raises(RecipeError, match=key + ": required key is missing"):
        Recipe.from_dict(_with_hardware(digits_recipe, {"arithmetic": {"units": {"int_add": {8: {"energy_pj": 1}}}}}))


def test_hardware_must_name_a_target(digits_recipe):
    with pytest.raises(RecipeError, match="names no target; give at least one of 'systolic', 'lut', 'arithmetic'"):
        Recipe.from_dict(_with_hardware(digits_recipe, {}))


def test_sense_systolic_recipe_loads():
    recipe = Recipe.load("sense-systolic")
    assert recipe.model.name == "resnet20"
    assert [stage.method for stage in recipe.stages] == ["sense"] and recipe.stages[0].sparsity == 0.5
    assert recipe.stages[0].balance == "kernel"  # every PE's kernel keeps 4 of 9: the paper's balance
    assert isinstance(recipe.measure.hardware.systolic, SystolicConfig)
    # the group balance it can be switched to spans one PE column: the array's height
    assert recipe.measure.hardware.systolic.rows == recipe.stages[0].tile == 8


def test_the_shift_table_is_refused_with_its_replacement(digits_recipe):
    with pytest.raises(RecipeError, match="a shift is no longer priced as an add of its width; a shift over S fixed "
                                          "positions is an S:1 multiplexer"):
        Recipe.from_dict(_with_hardware(digits_recipe, {"arithmetic": {"units": {
            "shift": {8: {"energy_pj": 0.03, "area_um2": 36}}}}}))


def test_lut_partitions_validate_by_key_path(digits_recipe):
    recipe = Recipe.from_dict(_with_hardware(digits_recipe, {"lut": {"partitions": {
        "hidden": {"fan_in": 6, "input_bits": 2}}}}))
    assert recipe.measure.hardware.lut.partitions["hidden"].output_bits is None
    with pytest.raises(RecipeError, match=r"'measure\.hardware\.lut\.partitions\.hidden\.fan_in': required"):
        Recipe.from_dict(_with_hardware(digits_recipe, {"lut": {"partitions": {"hidden": {"input_bits": 2}}}}))


@pytest.mark.parametrize(("module", "message"), [
    (nn.Embedding(10, 4), r"cannot cost layer '0' \(Embedding\): the hardware models know conv and linear"),
    (nn.Conv2d(4, 4, 3, groups=2), r"cannot cost layer '0' \(Conv2d, groups=2\)"),
])
def test_layers_the_models_cannot_cost_are_named(module, message):
    with pytest.raises(SlimkitError, match=message):
        trace_layers(nn.Sequential(module), [torch.zeros(1, 4, 5, 5, dtype=torch.long if isinstance(
            module, nn.Embedding) else torch.float32)])


def test_every_hardware_key_is_documented():
    from pathlib import Path

    from slimkit.hardware import ArithmeticConfig, LutConfig, LutPartition, UnitCosts

    doc = (Path(__file__).parents[2] / "docs" / "hardware.md").read_text()
    for config in (HardwareConfig, SystolicConfig, LutConfig, LutPartition, ArithmeticConfig, UnitCosts):
        missing = [key for key in config.model_fields if f"`{key}`" not in doc]
        assert not missing, f"docs/hardware.md lacks {config.__name__} keys {missing}"
