"""Methods declare the files they export (`Modifier.artifacts`); the pipeline writes them and a model file's
stages give them back, by name, with no code outside the method knowing which method it is."""

import json
from typing import ClassVar, Literal

import pytest
import torch

from slimkit.errors import CheckpointError
from slimkit.methods import _METHODS, MethodConfig, MethodSpec
from slimkit.persistence import exported_artifacts, read_artifacts
from slimkit.pipeline import run_recipe
from slimkit.recipe import Recipe
from slimkit.train import Modifier


class CountingConfig(MethodConfig):
    kind: ClassVar[str] = "prune"
    method: Literal["counting-export"] = "counting-export"
    label: str = "counted"


class CountingModifier(Modifier):
    """A user's method: it counts the epochs it saw and exports that count under a name of its own."""

    config: CountingConfig

    def __init__(self, config: CountingConfig):
        super().__init__(config)
        self.epochs = 0

    def on_epoch_start(self, epoch: int, ctx) -> None:
        self.epochs += 1

    def artifacts(self) -> dict:
        return {f"{self.config.label}.json": {"epochs": self.epochs}}

    def state_dict(self) -> dict:
        return {"epochs": self.epochs}

    def load_state_dict(self, state: dict) -> None:
        self.epochs = int(state["epochs"])


@pytest.fixture
def counting_method(monkeypatch):
    monkeypatch.setitem(_METHODS["prune"], "counting-export", MethodSpec(CountingConfig, CountingModifier))


def test_a_declared_artifact_is_written_beside_the_model_and_read_back_by_name(tmp_path, digits_recipe,
                                                                               counting_method):
    digits_recipe["baseline"]["epochs"], digits_recipe["train"]["epochs"] = 1, 3
    digits_recipe["stages"] = [{"prune": {"method": "counting-export", "label": "epochs-seen"}}]
    run_recipe(Recipe.from_dict(digits_recipe), tmp_path, progress=False)
    assert json.loads((tmp_path / "epochs-seen.json").read_text()) == {"epochs": 3}
    stages = torch.load(tmp_path / "model.pt", weights_only=True)["stages"]
    assert read_artifacts(stages) == {"epochs-seen.json": {"epochs": 3}}


def test_a_name_two_stages_export_is_kept_once_per_stage(counting_method):
    stages = [CountingModifier(CountingConfig(label=label)) for label in ("same", "other", "same")]
    for count, stage in enumerate(stages, start=1):
        stage.epochs = count
    assert exported_artifacts(stages) == {"stage0-same.json": {"epochs": 1}, "other.json": {"epochs": 2},
                                          "stage2-same.json": {"epochs": 3}}


def test_a_saved_state_the_method_cannot_use_names_the_stage():
    stages = [{"stage": {"prune": {"method": "patdnn"}},
               "state": {"current": 0.5, "pruned": True, "library": torch.ones(3, 4), "admm": {}}}]
    with pytest.raises(CheckpointError, match=r"model.pt: field 'stages\[0\].state' does not fit its patdnn stage: "
                                              r"the pattern library has shape \(3, 4\)"):
        read_artifacts(stages, "model.pt")
