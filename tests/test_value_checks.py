"""Values slimkit is handed that it must not compute on: NaN weights in a model file, architectures whose fields
are each allowed but whose product is terabytes, a layer with no weights, a user's factory or loss that raises,
and a full disk seen through torch.save. Each is an error (or, for `slimkit info`, a statement) naming what
is wrong. Tampered checkpoints (NaN, optimizer states of another shape) and metrics files are in
test_tampered.py."""

from __future__ import annotations

import builtins
import errno
import json
import os
import re
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
from slimkit.errors import SlimkitError
from slimkit.formats import MODEL_FORMAT, atomic_save
from slimkit.models import ModelConfig
from slimkit.persistence import save_model
from slimkit.recipe import Recipe


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
