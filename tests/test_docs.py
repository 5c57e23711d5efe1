"""The recipe documentation must name every key the schema accepts, so it cannot silently fall behind."""

import re
from pathlib import Path

import pytest

from slimkit.layers import LayerSelection
from slimkit.recipe import (
    STAGE_KINDS,
    DataConfig,
    MeasureConfig,
    ModelConfig,
    Recipe,
    TargetConfig,
    TrainConfig,
    method_configs,
)

DOC = (Path(__file__).parents[1] / "docs" / "recipes.md").read_text()
DOCUMENTED = set(re.findall(r"^\| `([a-z0-9_]+)` \|", DOC, flags=re.MULTILINE))

CONFIGS = [Recipe, ModelConfig, DataConfig, TrainConfig, MeasureConfig, LayerSelection, TargetConfig]
CONFIGS += [config for kind in STAGE_KINDS for config in method_configs(kind).values()]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.__name__)
def test_every_key_is_documented(config):
    missing = sorted(set(config.model_fields) - DOCUMENTED - {"method", "start_epoch", "end_epoch"})
    assert not missing, f"docs/recipes.md lacks {missing}"


def test_every_method_has_a_section():
    headings = re.findall(r"^### (\w+): (\w+)$", DOC, flags=re.MULTILINE)
    for kind in STAGE_KINDS:
        for method in method_configs(kind):
            assert (kind, method) in headings, f"docs/recipes.md has no '### {kind}: {method}'"
