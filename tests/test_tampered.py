"""Tampered files that carry no code but the right format tag and wrong content, one kind at a time (training
checkpoint, deployed model, channel plan, teacher, a run's metrics.json; model files in test_guarantees.py):
each is refused with an error naming the file and the field, before anything is built or rendered from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import slimkit
from conftest import SHORT_RECIPE as RECIPE
from slimkit.channels.plan import ChannelPlan
from slimkit.cli import main
from slimkit.errors import CheckpointError, SlimkitError
from slimkit.formats import CHECKPOINT_FORMAT, MODEL_FORMAT, safe_load
from slimkit.models import ModelConfig
from slimkit.persistence import save_model
from slimkit.recipe import Recipe
from slimkit.runtime.eager.deploy import DEPLOYED_FORMAT


def _run(out: Path, resume: bool = False) -> slimkit.Run:
    return slimkit.run_recipe(Recipe.from_dict(RECIPE), out, resume=resume, progress=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run's folder (a GMP stage, so its checkpoint holds a method state) to copy and tamper with."""
    out = tmp_path_factory.mktemp("finished") / "run"
    _run(out)
    return out


def _state(keys: dict) -> dict:
    return {k: torch.zeros(1) for k in keys}


def _first_float(state: dict) -> torch.Tensor:
    return next(t for t in state.values() if t.is_floating_point())


def _momentum(checkpoint: dict, dim: int) -> torch.Tensor:
    """The momentum buffer of the first parameter with `dim` dimensions."""
    return next(s["momentum_buffer"] for s in checkpoint["optimizer"]["state"].values()
                if s["momentum_buffer"].dim() == dim)


def _transpose_momentum(checkpoint: dict) -> None:
    """A 2-d momentum buffer transposed: the same values and count, another shape (torch checks neither)."""
    state = next(s for s in checkpoint["optimizer"]["state"].values() if s["momentum_buffer"].dim() == 2)
    state["momentum_buffer"] = state["momentum_buffer"].t().contiguous()


@pytest.mark.parametrize("tamper,message", [
    (lambda c: c.pop("model"), "field 'model' is missing"),
    (lambda c: c["model"].update(w="x"), r"field 'model\['w'\]' is str, not Tensor"),
    (lambda c: c.update(model=_state(c["model"])), "field 'model' does not fit the model"),
    (lambda c: c.update(epoch=True), "field 'epoch' is bool, not int"),
    (lambda c: c.update(epoch=7), "field 'epoch' is 7, beyond this run's 2 epochs"),
    (lambda c: c["train_config"].update(lr=-1), "'train_config.lr': invalid value -1"),
    (lambda c: c.update(optimizer={"state": {}}), "field 'optimizer.param_groups' is missing"),
    (lambda c: c["optimizer"]["param_groups"].append(dict(c["optimizer"]["param_groups"][0])),
     "field 'optimizer' does not fit this run's optimizer"),
    (lambda c: c.update(modifiers=[]), "field 'modifiers' holds 0 method states and this run has 1"),
    (lambda c: c.update(modifiers=[{}]), "field 'modifiers' does not fit this run's methods: a state lacks"),
    (lambda c: c.update(history={}), "field 'history' is dict, not list"),
    (lambda c: c["best"].update(model={"x": 1}), r"field 'best.model\['x'\]' is int, not Tensor"),
    (lambda c: c["best"].update(model=_state(c["best"]["model"])), "field 'best.model' does not fit the model"),
    (lambda c: c.update(recipe=5), "field 'recipe' is int, not str"),
    (lambda c: _first_float(c["model"]).view(-1)[3:5].fill_(float("nan")), r"field 'model\[.*\]' holds NaN or Inf"),
    (lambda c: _first_float(c["best"]["model"]).view(-1)[0].fill_(float("inf")),
     r"field 'best.model\[.*\]' holds NaN or Inf"),
    (lambda c: _momentum(c, 1).fill_(float("nan")), r"field 'optimizer.state\[\d+\].momentum_buffer' holds NaN"),
    (lambda c: _transpose_momentum(c), r"field 'optimizer.state\[\d+\].momentum_buffer' is \[\d+, \d+\], and its "
                                       r"parameter .*weight.* is \[\d+, \d+\]"),
])
def test_a_tampered_checkpoint_is_refused_on_resume_naming_the_field(tmp_path, finished, tamper, message):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    path = out / "compressed" / "checkpoint.pt"
    payload = safe_load(path, CHECKPOINT_FORMAT)
    tamper(payload)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=message) as error:
        _run(out, resume=True)
    assert str(path) in str(error.value)


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lenet") / "model.pt"
    save_model(slimkit.models.lenet(in_channels=1, input_size=8, width=0.5), path, ModelConfig(name="lenet", width=0.5),
               1, 10, 8)
    return path


@pytest.fixture(scope="module")
def deployed_file(lenet_file) -> Path:
    path = lenet_file.with_name("deployed.pt")
    return slimkit.save_deployed(slimkit.deploy(slimkit.load(lenet_file)), lenet_file, path)


@pytest.mark.parametrize("tamper,message", [
    (lambda p: p.pop("arch"), "field 'arch' is missing"),
    (lambda p: p["arch"].update(input_size=100000), "'arch.input_size': invalid value 100000"),
    (lambda p: p["state_dict"].update(w=[1.0]), r"field 'state_dict\['w'\]' is list, not Tensor"),
    (lambda p: p.update(deploy=["features.0"]), "field 'deploy' is list, not dict"),
    (lambda p: p.update(deploy={"features.0": "fast"}), r"field 'deploy\['features.0'\]' is 'fast', not 'deployed'"),
    (lambda p: p.update(deploy={"nope": "dense"}), "field 'deploy' names layer 'nope'"),
    (lambda p: p.update(deploy_options={"threads": 64}), "field 'deploy_options.threads' is not a deploy option"),
    (lambda p: p.update(deploy_options={"fold_batchnorm": "yes"}), "field 'deploy_options.fold_batchnorm' is str"),
    (lambda p: p.pop("deploy_report"), "field 'deploy_report' is missing"),
    (lambda p: p.update(deploy_report=[1]), r"field 'deploy_report\[0\]' is int, not dict"),
])
def test_a_tampered_deployed_model_is_refused_naming_the_field(tmp_path, deployed_file, tamper, message):
    assert slimkit.load_deployed(deployed_file).deploy_report  # the untampered file loads
    payload = safe_load(deployed_file, DEPLOYED_FORMAT)
    tamper(payload)
    torch.save(payload, tmp_path / "deployed.pt")
    with pytest.raises(CheckpointError, match=message) as error:
        slimkit.load_deployed(tmp_path / "deployed.pt")
    assert str(tmp_path / "deployed.pt") in str(error.value)


CONV = {"type": "conv", "out": [0, 1], "in": [0]}


@pytest.mark.parametrize("modules,message", [
    ({"features.0": {**CONV, "out": [0, -1]}}, r"field 'modules\['features.0'\].out' must hold indices >= 0"),
    ({"features.0": {**CONV, "out": [0, True]}}, r"field 'modules\['features.0'\].out\[1\]' is bool, not int"),
    ({"features.0": {"type": "conv", "out": [0]}}, r"field 'modules\['features.0'\].in' is missing"),
    ({"features.0": {**CONV, "type": "bogus"}}, r"field 'modules\['features.0'\].type' is 'bogus'"),
    ({"features.0": {**CONV, "groups": 0}}, r"field 'modules\['features.0'\].groups' must be >= 1"),
    ({"features.0": [0, 1]}, r"field 'modules\['features.0'\]' is list, not dict"),
])
def test_a_tampered_plan_file_is_refused_naming_the_field(tmp_path, modules, message):
    (tmp_path / "plan.json").write_text(json.dumps({"modules": modules}))
    with pytest.raises(CheckpointError, match=message) as error:
        ChannelPlan.load(tmp_path / "plan.json")
    assert str(tmp_path / "plan.json") in str(error.value)
    (tmp_path / "torn.json").write_text('{"modules": {"features.0": {"ty')
    with pytest.raises(CheckpointError, match=r"torn\.json cannot be read as a channel plan"):
        ChannelPlan.load(tmp_path / "torn.json")


@pytest.mark.parametrize("modules,message", [
    ({"features.0": {**CONV, "out": [0, 99]}}, "'features.0.out' names channel 99 of a layer with 10"),
    ({"nope": CONV}, "names 'nope', which the model does not have"),
    ({"classifier.1": {**CONV, "type": "norm", "keep": [0]}}, "is for a norm layer, and the model's 'classifier.1'"),
])
def test_a_plan_that_does_not_fit_the_model_is_refused_before_slicing(tmp_path, lenet_file, modules, message):
    arch = safe_load(lenet_file, MODEL_FORMAT)["arch"]
    with pytest.raises(CheckpointError, match=message):
        slimkit.load(arch, {"modules": modules}, {})
    payload = safe_load(lenet_file, MODEL_FORMAT)  # the same plan as a model file's channel stage
    payload["stages"] = [{"stage": {"channels": {"method": "l1", "ratio": 0.5}},
                          "state": {"plan": {"modules": modules}, "rounds": 1}}]
    torch.save(payload, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"field 'stages\[0\].state' does not fit its l1 stage"):
        slimkit.load(tmp_path / "model.pt")


@pytest.mark.parametrize("method", ["hinton", "rkd"])
def test_a_tampered_teacher_is_refused_before_anything_trains(tmp_path, lenet_file, digits_recipe, method):
    payload = safe_load(lenet_file, MODEL_FORMAT)
    payload["state_dict"]["features.0.weight"] = "code?"
    torch.save(payload, tmp_path / "teacher.pt")
    stage = {"method": method, "teacher": str(tmp_path / "teacher.pt")}
    digits_recipe["stages"] = [{"distill": stage | ({"taps": [["features.5", "features.5"]]} if method == "rkd"
                                                    else {})}]
    with pytest.raises(CheckpointError, match=r"teacher.pt: field 'state_dict\['features.0.weight'\]' is str"):
        slimkit.run_recipe(Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "dense").exists()


def test_a_teacher_file_is_read_once(tmp_path, lenet_file, digits_recipe, monkeypatch):
    import slimkit.persistence as persistence

    reads, read = [], persistence.read_model_file
    monkeypatch.setattr(persistence, "read_model_file", lambda path: reads.append(path) or read(path))
    digits_recipe["baseline"], digits_recipe["train"]["epochs"] = None, 1
    digits_recipe["stages"] = [{"distill": {"method": "rkd", "teacher": str(lenet_file),
                                            "taps": [["features.5", "features.5"]]}}]
    slimkit.run_recipe(Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    assert reads == [lenet_file]


def test_a_tampered_checkpoint_exits_2_from_the_cli(tmp_path, finished, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    payload = safe_load(out / "dense" / "checkpoint.pt", CHECKPOINT_FORMAT)
    del payload["history"]
    torch.save(payload, out / "dense" / "checkpoint.pt")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "checkpoint.pt: field 'history' is missing" in capsys.readouterr().err
    with pytest.raises(SlimkitError):  # and never a KeyError from deep inside
        _run(out, resume=True)


def _drop(path: str):
    def tamper(m: dict) -> None:
        *parents, last = path.split(".")
        node = m
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]
    return tamper


def _set(path: str, value):
    def tamper(m: dict) -> None:
        *parents, last = path.split(".")
        node = m
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return tamper


@pytest.mark.parametrize("tamper,field", [
    (_drop("models.dense.test_loss"), "models.dense.test_loss"),
    (_set("models.compressed.measurement.sparsity", "high"), "models.compressed.measurement.sparsity"),
    (_set("models.compressed.measurement.layers.0", [1, 2]), "models.compressed.measurement.layers[0]"),
    (_set("models.dense.history.0.train_loss", None), "models.dense.history[0].train_loss"),
    (_drop("models.compressed.history.1.train_acc"), "models.compressed.history[1].train_acc"),
    (_drop("models.dense.test_acc"), "models.dense.test_acc"),
    (_drop("models.dense.measurement.latency_ms.8"), "lacks batch 8"),
    (_set("stages.0.achieved_sparsity", True), "stages[0].achieved_sparsity"),
    (_set("environment", []), "environment"),
    (_set("engine", {"artifact": "x", "threads": 1}), "engine.computed.batches"),
])
def test_a_tampered_metrics_file_is_refused_by_report_naming_the_field(tmp_path, finished, capsys, tamper, field):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    metrics = json.loads((out / "metrics.json").read_text())
    tamper(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics))
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert "metrics.json does not hold the metrics of a slimkit run" in err and field in err
    assert (out / "report.md").read_text() == (finished / "report.md").read_text()


def test_a_torn_metrics_file_is_refused_by_report(tmp_path, finished, capsys):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "metrics.json").write_text((finished / "metrics.json").read_text()[:100])
    assert main(["report", str(out)]) == 2
    assert "metrics.json is not a metrics file: not valid JSON" in capsys.readouterr().err


def test_report_renders_an_untouched_run(tmp_path, finished):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    assert main(["report", str(out)]) == 0
