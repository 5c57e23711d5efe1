"""Code runs only when the user says so: a recipe, a run folder, a checkpoint's saved recipe or a model file
that names code (an import path) makes slimkit import nothing unless the user passes --trust-code /
trust_code=True or allow-lists the package in SLIMKIT_TRUSTED_MODULES. Each test plants a module whose
import leaves a mark, so "imported nothing" is observed, not inferred from an error message."""

from __future__ import annotations

import shutil
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml

import slimkit
from slimkit.cli import main
from slimkit.errors import CheckpointError, RecipeError, SlimkitError
from slimkit.formats import CHECKPOINT_FORMAT, MODEL_FORMAT, safe_load
from slimkit.recipe import Recipe

TRUSTED_MODULES_ENV = "SLIMKIT_TRUSTED_MODULES"  # the user's allow-list (docs/guarantees.md)
RUN = {"name": "trust", "model": {"name": "mlp", "options": {"hidden": [8]}}, "data": {"name": "digits"},
       "train": {"epochs": 1, "lr": 0.05},
       "measure": {"batch_sizes": [1], "repeats": 1, "warmup": 1, "hardware": {"arithmetic": {}}}}

PLANTED = '''
from pathlib import Path
import torch
from torch import nn
from torch.utils.data import TensorDataset

Path({mark!r}).write_text("imported")

def model(**kwargs):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

def data(**kwargs):
    x, y = torch.rand(96, 1, 8, 8), torch.randint(0, 10, (96,))
    return {{"train": TensorDataset(x[:64], y[:64]), "val": TensorDataset(x[64:], y[64:])}}

def loss(outputs, target):
    return nn.functional.cross_entropy(outputs, target)
'''


class Planted:
    """A module on sys.path whose import writes `mark`: the test's witness of code that ran."""

    def __init__(self, folder: Path):
        self.name = f"planted_{uuid.uuid4().hex[:8]}"
        self.mark = folder / f"{self.name}.imported"
        (folder / f"{self.name}.py").write_text(PLANTED.format(mark=str(self.mark)))

    def ran(self) -> bool:
        return self.mark.exists()


@pytest.fixture
def planted(tmp_path, monkeypatch) -> Planted:
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delenv(TRUSTED_MODULES_ENV, raising=False)
    module = Planted(folder)
    yield module
    sys.modules.pop(module.name, None)


def _write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_a_recipe_naming_os_system_runs_nothing_and_says_how_to_opt_in(tmp_path, capsys):
    mark = tmp_path / "shell-ran"
    recipe = {**RUN, "model": {"factory": "os:system", "kwargs": {"command": f"touch {mark}"}}}
    assert main(["run", str(_write(tmp_path / "r.yaml", recipe)), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert not mark.exists()
    assert "model.factory: 'os:system' names code" in err
    assert "--trust-code" in err and TRUSTED_MODULES_ENV in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key,section", [
    ("model.factory", lambda m: {"model": {"factory": f"{m}:model"}}),
    ("data.factory", lambda m: {"data": {"factory": f"{m}:data"}}),
    ("objective.loss", lambda m: {"objective": {"loss": f"{m}:loss"}}),
    ("objective.metric", lambda m: {"objective": {"metric": f"{m}:loss"}}),
])
def test_a_recipe_file_imports_its_code_only_when_trusted(tmp_path, planted, monkeypatch, key, section):
    path = _write(tmp_path / "r.yaml", {**RUN, **section(planted.name)})
    with pytest.raises(RecipeError, match=f"{key}: '{planted.name}:.*' names code") as error:
        Recipe.load(path)
    assert "trust_code=True" in str(error.value) and not planted.ran()
    with pytest.raises(RecipeError, match=f"{key}: '{planted.name}:"):  # the Python entry points too
        slimkit.compress(torch.nn.Linear(64, 10), None, path, progress=False)
    assert not planted.ran()
    monkeypatch.setenv(TRUSTED_MODULES_ENV, f"other, {planted.name}_not")  # a longer name is another package
    with pytest.raises(RecipeError, match="names code"):
        Recipe.load(path)
    assert not planted.ran()
    monkeypatch.setenv(TRUSTED_MODULES_ENV, f"other,{planted.name}")
    assert Recipe.load(path).to_yaml() == Recipe.load(path, trust_code=True).to_yaml()
    assert planted.ran()


def test_trust_code_imports_and_runs_the_recipes_code(tmp_path, planted, capsys):
    recipe = {**RUN, "model": {"factory": f"{planted.name}:model"}, "data": {"factory": f"{planted.name}:data"}}
    recipe["measure"] = {"batch_sizes": [1], "repeats": 1, "warmup": 1}
    path = _write(tmp_path / "r.yaml", recipe)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert not planted.ran() and "--trust-code" in capsys.readouterr().err
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress", "--trust-code"]) == 0
    assert planted.ran() and (tmp_path / "run" / "weights.pt").exists()


def test_an_allow_list_entry_that_is_not_a_module_name_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv(TRUSTED_MODULES_ENV, "good,not a module")
    path = _write(tmp_path / "r.yaml", {**RUN, "model": {"factory": "good:build"}})
    with pytest.raises(SlimkitError, match=f"{TRUSTED_MODULES_ENV}: 'not a module' is not a module name"):
        Recipe.load(path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished zoo-model run on digits whose recipe has a hardware section (so info reads its data)."""
    out = tmp_path_factory.mktemp("trust") / "run"
    slimkit.run_recipe(Recipe.from_dict(RUN), out, progress=False)
    return out


@pytest.fixture
def shared_run(tmp_path, finished, planted) -> Path:
    """The finished run as someone else shared it: its recipe.yaml's data section names their code."""
    out = tmp_path / "shared"
    shutil.copytree(finished, out)
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    recipe["data"] = {"factory": f"{planted.name}:data", "batch_size": 32}
    recipe["objective"] = {"loss": f"{planted.name}:loss"}
    _write(out / "recipe.yaml", recipe)
    return out


def test_info_on_a_shared_run_imports_nothing(shared_run, planted, capsys):
    assert main(["info", str(shared_run)]) == 0
    out = capsys.readouterr().out
    assert not planted.ran()
    assert "hardware section skipped" in out and "data.factory" in out and "--trust-code" in out
    assert main(["info", str(shared_run), "--json", "--trust-code"]) == 0  # asked for: calibrated on its data
    assert planted.ran() and '"arithmetic"' in capsys.readouterr().out


def test_export_int8_of_a_shared_run_needs_trust_for_its_data(shared_run, planted, capsys):
    assert main(["export", str(shared_run), "--int8", "--out", str(shared_run / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert not planted.ran() and not (shared_run / "m.onnx").exists()
    assert "data.factory" in err and "--trust-code" in err


def test_resume_imports_nothing_a_checkpoints_recipe_names(tmp_path, finished, planted, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    path = out / "compressed" / "checkpoint.pt"
    payload = safe_load(path, CHECKPOINT_FORMAT)
    saved = yaml.safe_load(payload["recipe"])
    saved["model"] = {"factory": f"{planted.name}:model"}
    payload["recipe"] = yaml.safe_dump(saved)
    torch.save(payload, path)
    recipe = _write(tmp_path / "r.yaml", RUN)
    assert main(["run", str(recipe), "--out", str(out), "--resume", "--no-progress"]) == 2
    assert not planted.ran()
    assert "differs from this recipe" in capsys.readouterr().err


def test_a_model_file_naming_code_is_refused_without_importing_it(tmp_path, finished, planted):
    payload = safe_load(finished / "model.pt", MODEL_FORMAT)
    payload["arch"] = {"factory": f"{planted.name}:model"}
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"field 'arch.factory' names code"):
        slimkit.load(tmp_path / "model.pt")
    assert not planted.ran()


def test_objects_passed_in_python_are_trusted(planted):
    from slimkit.models import ModelConfig, build_model

    config = ModelConfig(factory=f"{planted.name}:model")  # built in code: the user's own
    assert isinstance(build_model(config), torch.nn.Module) and planted.ran()
