"""Values slimkit is handed that it must not compute on: NaN weights in a checkpoint or a model file, optimizer
states of the wrong shape, architectures whose fields are each allowed but whose product is terabytes, an
edited metrics.json, a layer with no weights, a user's factory or loss that raises, and a full disk seen
through torch.save. Each is an error (or, for `slimkit info`, a statement) naming what is wrong."""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

import slimkit
from conftest import SHORT_RECIPE
from slimkit.cli import main
from slimkit.errors import CheckpointError, SlimkitError
from slimkit.models import ModelConfig
from slimkit.persistence import save_model
from slimkit.recipe import Recipe
from slimkit.train.checkpoint import CHECKPOINT_FORMAT, MODEL_FORMAT, atomic_save, safe_load


def _run(out: Path, resume: bool = False) -> slimkit.Run:
    return slimkit.run_recipe(Recipe.from_dict(SHORT_RECIPE), out, resume=resume, progress=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("values") / "run"
    _run(out)
    return out


def _tampered_checkpoint(tmp_path: Path, finished: Path, tamper) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    path = out / "compressed" / "checkpoint.pt"
    payload = safe_load(path, CHECKPOINT_FORMAT)
    tamper(payload)
    torch.save(payload, path)
    return out


def _first_float(state: dict) -> str:
    return next(k for k, t in state.items() if t.is_floating_point())


@pytest.mark.parametrize("field,tamper", [
    ("model", lambda c: c["model"][_first_float(c["model"])].view(-1)[3:5].fill_(float("nan"))),
    ("best.model", lambda c: c["best"]["model"][_first_float(c["best"]["model"])].view(-1)[0].fill_(float("inf"))),
    ("optimizer.state", lambda c: next(iter(c["optimizer"]["state"].values()))["momentum_buffer"].fill_(
        float("nan"))),
])
def test_a_checkpoint_holding_nan_is_refused_on_resume_naming_the_tensor(tmp_path, finished, field, tamper):
    out = _tampered_checkpoint(tmp_path, finished, tamper)
    with pytest.raises(CheckpointError, match=rf"checkpoint.pt: field '{field}\[.*' holds NaN or Inf"):
        _run(out, resume=True)
    assert json.loads((out / "metrics.json").read_text()) == json.loads((finished / "metrics.json").read_text())


def test_an_optimizer_state_of_another_shape_is_refused_naming_the_field(tmp_path, finished):
    def transpose_first_momentum(c: dict) -> None:
        state = next(s for s in c["optimizer"]["state"].values() if s["momentum_buffer"].dim() == 2)
        state["momentum_buffer"] = state["momentum_buffer"].t().contiguous()

    out = _tampered_checkpoint(tmp_path, finished, transpose_first_momentum)
    with pytest.raises(CheckpointError, match=r"field 'optimizer.state\[\d+\].momentum_buffer' is \[\d+, \d+\], "
                                              r"and its parameter .*weight.* is \[\d+, \d+\]"):
        _run(out, resume=True)


def test_info_on_a_nan_model_says_so(tmp_path, capsys):
    model = slimkit.models.lenet(in_channels=1, input_size=8, width=0.5)
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] = float("nan")
    save_model(model, tmp_path / "model.pt", ModelConfig(name="lenet", width=0.5), 1, 10, 8)
    assert main(["info", str(tmp_path / "model.pt"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["non_finite"] == ["features.0.weight"]
    structure = {layer["name"]: layer["structure"] for layer in summary["layers"]}
    assert structure["features.0"] == "NaN/Inf" and structure["classifier.1"] == "dense"
    assert main(["info", str(tmp_path / "model.pt")]) == 0
    assert "NaN or Inf in 1 tensors (features.0.weight)" in capsys.readouterr().out


def test_architecture_fields_are_bounded_in_product(tmp_path, capsys):
    """Width 16 and input 4096 are each allowed; together LeNet asks for 26.8 TB of weights."""
    arch = {"name": "lenet", "width": 16.0, "in_channels": 3, "num_classes": 10, "input_size": 4096}
    payload = {"format": MODEL_FORMAT, "arch": arch, "stages": [], "state_dict": {}}
    torch.save(payload, tmp_path / "model.pt")
    assert main(["info", str(tmp_path / "model.pt")]) == 2
    err = capsys.readouterr().err
    assert "field 'arch': lenet with width 16, in_channels 3, input_size 4096 and num_classes 10 asks for about " \
           "26.9 TB (26.8 TB of weights" in err
    recipe = {**SHORT_RECIPE, "model": {"name": "lenet", "width": 16, "input_size": 4096}}
    with pytest.raises(SlimkitError, match=r"model: lenet with width 16, .* asks for about \d+\.\d TB"):
        slimkit.run_recipe(Recipe.from_dict(recipe), progress=False)


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


@pytest.mark.parametrize("empty", [nn.Linear(16, 0), nn.Conv2d(1, 0, 3)])
def test_a_layer_with_no_weights_is_refused_naming_it(empty):
    if isinstance(empty, nn.Conv2d):
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), empty, nn.Flatten(), nn.LazyLinear(10))
        data = TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    else:
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), empty, nn.Linear(0, 4))
        data = TensorDataset(torch.randn(64, 8), torch.randint(0, 4, (64,)))
    recipe = {"data": {"name": "digits", "batch_size": 16}, "train": {"epochs": 1},
              "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}], "measure": {"batch_sizes": [1]}}
    with pytest.raises(SlimkitError, match=r"the model's layer '2' \((Linear|Conv2d)\) has a weight of shape "
                                           r"\[0, .*\], which holds no values"):
        slimkit.compress(model, data, Recipe.from_dict(recipe), progress=False)
    with pytest.raises(SlimkitError, match=r"the model's layer '2' .* holds no values"):
        slimkit.prepare(model, recipe["stages"][0], steps_per_epoch=1, epochs=1)


RAISING = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset

def model(**kwargs):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

def data(root):
    raise FileNotFoundError(f"no data under {root}")

def split_data():
    x, y = torch.rand(96, 1, 8, 8), torch.randint(0, 10, (96,))
    return {"train": TensorDataset(x[:64], y[:64]), "val": TensorDataset(x[64:], y[64:])}

def loss(outputs, target):
    raise ValueError("this loss takes probabilities")
'''


@pytest.fixture
def raising(tmp_path, monkeypatch) -> str:
    name = f"raising_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(RAISING)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize("section,message", [
    ({"data": {"factory": "{m}:data", "kwargs": {"root": "/nowhere"}}},
     r"data.factory '{m}:data' raised FileNotFoundError: no data under /nowhere \(at .*{m}.py:10\)"),
    ({"data": {"factory": "{m}:split_data"}, "objective": {"loss": "{m}:loss"}},
     r"objective.loss '{m}:loss' raised ValueError: this loss takes probabilities \(at .*{m}.py:17\)"),
], ids=["data.factory", "objective.loss"])
def test_a_factory_or_loss_that_raises_is_an_error_naming_the_recipe_key(tmp_path, raising, capsys, monkeypatch,
                                                                          section, message):
    recipe = {"model": {"factory": f"{raising}:model"}, "train": {"epochs": 1}, "measure": {"batch_sizes": [1]}}
    recipe.update(yaml.safe_load(yaml.safe_dump(section).replace("{m}", raising)))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    monkeypatch.setenv("SLIMKIT_TRUSTED_MODULES", raising)
    assert main(["run", str(tmp_path / "r.yaml"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("slimkit: error: ") and "Traceback" not in err
    assert re.search(message.replace("{m}", raising), err), err


class FullDisk:
    """A file on a disk with `room` bytes left: a write beyond it fails with ENOSPC, as the kernel's does, and
    what was written stays written (so closing it succeeds, and torch's own error is what reaches slimkit)."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name: str):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()


def test_a_full_disk_under_torch_save_reports_no_space_left(tmp_path, monkeypatch):
    import slimkit.files

    atomic_save({"w": torch.zeros(10)}, tmp_path / "checkpoint.pt")

    def open_on_a_full_disk(path: Path, mode: str) -> FullDisk:
        return FullDisk(builtins.open(path, mode), 1000)

    monkeypatch.setattr(slimkit.files, "open", open_on_a_full_disk, raising=False)
    with pytest.raises(SlimkitError, match=r"cannot write .*checkpoint.pt: No space left on device;") as error:
        atomic_save({"w": torch.zeros(100_000)}, tmp_path / "checkpoint.pt")
    assert "unexpected pos" not in str(error.value)
    assert torch.equal(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["w"], torch.zeros(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
