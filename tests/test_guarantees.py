"""What survives a kill, a full disk and bad input: atomic writes, clear errors, nothing silently accepted."""

from __future__ import annotations

import errno
import os
import pickle

import pytest
import torch
import yaml

import slimkit
from slimkit.cli import main
from slimkit.errors import CheckpointError, SlimkitError
from slimkit.files import atomic_write_text, remove_stale_temps
from slimkit.recipe import Recipe
from slimkit.train.checkpoint import CHECKPOINT_FORMAT, safe_load


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_text(target, "complete")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(SlimkitError, match=r"cannot write .*metrics.json: No space left on device"):
        atomic_write_text(target, "torn")
    assert target.read_text() == "complete" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_stale_temp_files_of_a_killed_run_are_removed_on_resume(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "dense").mkdir(parents=True)
    left = [run_dir / "dense" / ".checkpoint.pt.4242.tmp", run_dir / ".recipe.yaml.4242.tmp"]
    for p in left:
        p.write_bytes(b"half")
    assert set(remove_stale_temps(run_dir)) == set(left) and not any(p.exists() for p in left)


def test_an_empty_recipe_file_is_named_as_such_on_resume(tmp_path, digits_recipe):
    digits_recipe["baseline"]["epochs"], digits_recipe["train"]["epochs"] = 1, 1
    digits_recipe["stages"] = []
    recipe = Recipe.from_dict(digits_recipe)
    slimkit.run_recipe(recipe, tmp_path / "run", progress=False)
    (tmp_path / "run" / "recipe.yaml").write_text("")
    with pytest.raises(SlimkitError, match=r"recipe.yaml is empty"):
        slimkit.run_recipe(recipe, tmp_path / "run", resume=True, progress=False)


def test_a_duplicate_yaml_key_is_an_error(tmp_path, digits_recipe, capsys):
    text = yaml.safe_dump(digits_recipe, sort_keys=False).replace("seed: 0\n", "seed: 0\nseed: 1\n")
    (tmp_path / "dup.yaml").write_text(text)
    assert main(["run", str(tmp_path / "dup.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "key 'seed' is given twice" in capsys.readouterr().err


@pytest.mark.parametrize("path,value", [(("stages", 0, "prune", "sparsity"), False), (("train", "epochs"), True),
                                        (("data", "batch_size"), True)])
def test_a_boolean_is_never_read_as_a_number(digits_recipe, path, value):
    node = digits_recipe
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(SlimkitError, match=f"'{path[-1]}': {value} is a boolean"):
        Recipe.from_dict(digits_recipe)


def test_a_diverging_run_stops_with_a_clear_error(tmp_path, digits_recipe, capsys):
    digits_recipe["baseline"] = None
    digits_recipe["train"] = {"epochs": 2, "lr": 1.0e6, "momentum": 0.9}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(digits_recipe))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "training diverged" in err and "at epoch 1, step" in err
    assert not (tmp_path / "run" / "metrics.json").exists()  # no report of a NaN run


def test_nan_weights_handed_to_compress_are_refused(digits_recipe):
    model = slimkit.models.lenet(in_channels=1, input_size=8, width=0.5)
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(SlimkitError, match=r"features.0.weight holds NaN or Inf"):
        slimkit.compress(model, "digits", Recipe.from_dict(digits_recipe), progress=False)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_file_that_holds_code_is_refused_without_advice_to_turn_the_protection_off(tmp_path):
    path = tmp_path / "model.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": CHECKPOINT_FORMAT, "evil": Payload()}, f)
    torch.save({"format": CHECKPOINT_FORMAT, "evil": Payload()}, path)
    with pytest.raises(CheckpointError) as error:
        safe_load(path, CHECKPOINT_FORMAT)
    message = str(error.value)
    assert "holds code" in message and "weights_only=False" not in message


@pytest.mark.parametrize("stage,message", [
    ({"prune": {"method": "gmp", "sparsity": 0.5, "layers": {"include": ["nothing.*"]}}},
     "'stages[0].prune.layers': the layer selection"),
    ({"channels": {"method": "l1", "ratio": 0.5, "keep": ["no_such_layer"]}}, "'stages[0].channels.keep'"),
    ({"quantize": {"method": "uniform", "layers": {"include": ["features.1"]}}},
     "'stages[0].quantize.layers': layers.include pattern 'features.1' matches only unsupported"),
])
def test_layer_selections_are_checked_before_any_training(tmp_path, digits_recipe, stage, message):
    digits_recipe["stages"] = [stage]
    digits_recipe["train"]["epochs"] = 4
    with pytest.raises(SlimkitError, match=message.replace("[", r"\[").replace("]", r"\]")):
        slimkit.run_recipe(Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "dense").exists()  # the baseline never started


def test_distillation_taps_are_checked_before_any_training(tmp_path, digits_recipe):
    teacher = slimkit.models.lenet(in_channels=1, input_size=8, width=0.5)
    digits_recipe["stages"] = [{"distill": {"method": "rkd", "teacher": teacher, "taps": [["features.5", "nope"]]}}]
    with pytest.raises(SlimkitError, match=r"'stages\[0\].distill.taps': the teacher has no module 'nope'"):
        slimkit.run_recipe(Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "dense").exists()


@pytest.mark.parametrize("key,value,message", [("in_channels", 3, "does not run on the data's inputs"),
                                               ("num_classes", 7, "outputs 7 classes and the data has 10")])
def test_a_model_that_does_not_fit_the_data_is_an_error_before_training(tmp_path, digits_recipe, key, value, message):
    digits_recipe["model"][key] = value
    with pytest.raises(SlimkitError, match=message):
        slimkit.run_recipe(Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "dense").exists()


@pytest.mark.parametrize("content,message", [(b"\x1f\x8b not gzip at all", "cannot be read as gzip"),
                                             (b"\x00\x00\x08\x03\x00", "bad IDX header")])
def test_a_data_file_that_is_not_what_it_claims_is_named(tmp_path, content, message):
    from slimkit.data.idx import read_idx

    path = tmp_path / ("train-images-idx3-ubyte.gz" if content.startswith(b"\x1f") else "train-images-idx3-ubyte")
    path.write_bytes(content)
    with pytest.raises(SlimkitError, match=message) as error:
        read_idx(path)
    assert str(path) in str(error.value)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from slimkit.models import ModelConfig
    from slimkit.persistence import save_model

    path = tmp_path_factory.mktemp("saved") / "model.pt"
    model = slimkit.models.lenet(in_channels=1, input_size=8, width=0.5)
    save_model(model, path, ModelConfig(name="lenet", width=0.5), 1, 10, 8)
    return path


@pytest.mark.parametrize("tamper,message", [
    (lambda p: p["arch"].update(input_size=100000), "'arch.input_size': invalid value 100000"),
    (lambda p: p.pop("arch"), "field 'arch' is missing"),
    (lambda p: p["arch"].update(in_channels=None), "field 'arch' lacks in_channels"),
    (lambda p: p.update(state_dict={"w": "not a tensor"}), "'state_dict' holds values that are not tensors"),
    (lambda p: p.update(stages=[{"stage": {"prune": {"method": "nope"}}}]), "unknown method 'nope'"),
])
def test_a_tampered_model_file_is_refused_naming_the_field(tmp_path, saved_model, capsys, tamper, message):
    from slimkit.train.checkpoint import MODEL_FORMAT

    payload = safe_load(saved_model, MODEL_FORMAT)
    tamper(payload)
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        slimkit.load(path)
    assert main(["info", str(path)]) == 2 and message.split("'")[1] in capsys.readouterr().err
