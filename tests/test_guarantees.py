"""What survives a kill, a full disk and bad input: atomic writes, clear errors, nothing silently accepted."""

from __future__ import annotations

import copy
import errno
import os
import pickle
import re
import shutil

import pytest
import torch
import yaml

import slimkit
from slimkit.cli import main
from slimkit.errors import CheckpointError, SlimkitError
from slimkit.files import atomic_write_text, remove_stale_temps
from slimkit.formats import CHECKPOINT_FORMAT, WEIGHTS_FORMAT, safe_load
from slimkit.recipe import Recipe
from slimkit.train.config import TrainConfig
from slimkit.train.objective import make_objective


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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch run without stages, and its recipe: what the resume tests tear and tamper with."""
    from conftest import DIGITS_RECIPE

    spec = copy.deepcopy(DIGITS_RECIPE)
    spec["baseline"]["epochs"], spec["train"]["epochs"], spec["stages"] = 1, 1, []
    recipe = Recipe.from_dict(spec)
    out = tmp_path_factory.mktemp("finished") / "run"
    slimkit.run_recipe(recipe, out, progress=False)
    return recipe, out


@pytest.mark.parametrize("torn,named", [("", "is empty"), ("name: digits-test\nmodel: {name: len", "is torn")])
def test_a_torn_recipe_file_is_named_and_restored_from_the_checkpoint(tmp_path, finished_run, capsys, torn, named):
    recipe, finished = finished_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    (run / "recipe.yaml").write_text(torn)
    slimkit.run_recipe(recipe, run, resume=True, progress=False)
    err = capsys.readouterr().err
    assert f"recipe.yaml {named}" in err and f"restoring it from {run / 'compressed' / 'checkpoint.pt'}" in err
    assert Recipe.load(str(run / "recipe.yaml")).to_yaml() == recipe.to_yaml()
    assert not list(run.rglob("*.tmp"))


def test_a_torn_recipe_file_without_a_checkpoint_copy_is_named(tmp_path, finished_run):
    recipe, finished = finished_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for phase in ("dense", "compressed"):  # as a version from before checkpoints kept the recipe wrote them
        state = safe_load(run / phase / "checkpoint.pt", CHECKPOINT_FORMAT)
        del state["recipe"]
        torch.save(state, run / phase / "checkpoint.pt")
    (run / "recipe.yaml").write_text("")
    with pytest.raises(SlimkitError, match=r"recipe.yaml is empty .* the checkpoint keeps no copy"):
        slimkit.run_recipe(recipe, run, resume=True, progress=False)


def test_a_resume_checks_the_recipe_kept_in_the_checkpoint(tmp_path, finished_run):
    recipe, finished = finished_run
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    other = Recipe.from_dict(recipe.to_dict() | {"seed": 1})
    (run / "recipe.yaml").write_text(other.to_yaml())  # recipe.yaml agrees; the run's record does not
    with pytest.raises(SlimkitError, match=r"the recipe kept in .*checkpoint.pt differs from this recipe"):
        slimkit.run_recipe(other, run, resume=True, progress=False)


def test_a_duplicate_yaml_key_is_an_error(tmp_path, digits_recipe, capsys):
    text = yaml.safe_dump(digits_recipe, sort_keys=False).replace("seed: 0\n", "seed: 0\nseed: 1\n")
    (tmp_path / "dup.yaml").write_text(text)
    assert main(["run", str(tmp_path / "dup.yaml"), "--out", str(tmp_path / "run")]) == 2
    assert "key 'seed' is given twice" in capsys.readouterr().err


@pytest.mark.parametrize("override,says", [
    ("stages.0.prune.sparsity=nan", "'stages[0].prune.sparsity': invalid value 'nan': NaN is not a number; it must "
                                    "be less than 1"),
    ("stages.0.prune.sparsity=.nan", "'stages[0].prune.sparsity': invalid value nan: NaN is not a number"),
    ("train.epochs=0", "'stages[0].prune.end_epoch': 2 is beyond train.epochs (0)"),
])
def test_weak_messages_name_the_key_and_what_is_wrong(tmp_path, digits_recipe, capsys, override, says):
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(digits_recipe, sort_keys=False))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), override]) == 2
    err = capsys.readouterr().err
    assert says in err and "<recipe>" not in err and "{'name'" not in err  # no whole-recipe dump


def test_an_override_without_a_value_says_how_to_write_one(capsys):
    with pytest.raises(SystemExit) as exit_code:
        main(["run", "gmp-90", "train.epochs"])
    assert exit_code.value.code == 2
    assert "override 'train.epochs' has no value: write key.path=value" in capsys.readouterr().err


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


def _loss_turning_nan(after_epochs: int, batches: int | None = None):
    """Cross-entropy that is NaN on training batches once `after_epochs` epochs are done (the first `batches`
    of them, or all), and how many training batches each epoch saw; evaluation stays finite."""
    seen: list[int] = [0]

    def loss(out, target):
        value = torch.nn.functional.cross_entropy(out, target)
        if not torch.is_grad_enabled():
            return value
        seen[-1] += 1
        poisoned = len(seen) > after_epochs and (batches is None or seen[-1] <= batches)
        return value * float("nan") if poisoned else value

    return make_objective(loss, "accuracy"), lambda record: seen.append(0), seen


def test_a_loss_turning_nan_stops_and_the_last_good_checkpoint_stays_the_latest(tmp_path, digits_recipe):
    digits_recipe["baseline"], digits_recipe["stages"] = None, []
    digits_recipe["train"]["epochs"] = 2
    objective, next_epoch, seen = _loss_turning_nan(after_epochs=1)
    with pytest.raises(SlimkitError, match="training diverged") as error:
        slimkit.run_recipe(Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False, objective=objective,
                           callbacks=(next_epoch,))
    assert f"the loss is nan at epoch 2, step {seen[0] + 1}:" in str(error.value) and seen[1] == 1
    state = safe_load(tmp_path / "run" / "compressed" / "checkpoint.pt", CHECKPOINT_FORMAT)
    assert state["epoch"] == 0 and len(state["history"]) == 1
    assert safe_load(tmp_path / "run" / "compressed" / "best.pt", WEIGHTS_FORMAT)["epoch"] == 0
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_nan_policy_skip_skips_those_batches_and_finishes(tmp_path, digits_recipe):
    digits_recipe["baseline"] = None
    digits_recipe["train"] |= {"epochs": 2, "nan_policy": "skip"}
    digits_recipe["stages"][0]["prune"]["scope"] = "layer"  # from random weights, global would empty a layer
    objective, next_epoch, _ = _loss_turning_nan(after_epochs=1, batches=2)
    run = slimkit.run_recipe(Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False, objective=objective,
                             callbacks=(next_epoch,))
    history = run.metrics["models"]["compressed"]["history"]
    assert "skipped_batches" not in history[0] and history[1]["skipped_batches"] == 2
    assert all(t.isfinite().all() for t in run.model.state_dict().values() if t.is_floating_point())
    assert (tmp_path / "run" / "metrics.json").exists()


def test_nan_policy_skip_changes_no_weight_and_stops_after_an_epoch_of_skips():
    from slimkit.data import DataConfig, load_data

    model = slimkit.models.lenet(in_channels=1, input_size=8, width=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    objective, _, seen = _loss_turning_nan(after_epochs=0)
    trainer = slimkit.Trainer(model, load_data(DataConfig(name="digits")), TrainConfig(epochs=2, nan_policy="skip"),
                              batch_size=64, progress=False, objective=objective)
    with pytest.raises(SlimkitError, match=r"at epoch 1, step (\d+): \1 batches were skipped .* as many as one "
                                           r"epoch holds"):
        trainer.fit()
    assert seen == [len(trainer._loader()[0])]
    for name, value in model.state_dict().items():  # no update: no gradient, no weight decay, no momentum
        assert torch.equal(value, before[name]), name


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
    (lambda p: p.update(state_dict={"w": "not a tensor"}), "field 'state_dict\\['w'\\]' is str, not Tensor"),
    (lambda p: p.update(stages=[{"stage": {"prune": {"method": "nope"}}}]), "unknown method 'nope'"),
])
def test_a_tampered_model_file_is_refused_naming_the_field(tmp_path, saved_model, capsys, tamper, message):
    from slimkit.formats import MODEL_FORMAT

    payload = safe_load(saved_model, MODEL_FORMAT)
    tamper(payload)
    path = tmp_path / "model.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message):
        slimkit.load(path)
    assert main(["info", str(path)]) == 2 and re.search(message, capsys.readouterr().err)
