"""Fault injection: a kill -9 at each write point of a run (checkpoint, best, model, metrics, the recipe rewrite of
a resume) and a full disk; each run then resumes to the result of an uninterrupted one, leaving no temporary
file."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

import slimkit
from conftest import SHORT_RECIPE as RECIPE
from interrupts import run_killed_at_write
from slimkit.cli import main
from slimkit.formats import CHECKPOINT_FORMAT, safe_load
from slimkit.recipe import Recipe


def _run(out: Path, resume: bool = False) -> slimkit.Run:
    return slimkit.run_recipe(Recipe.from_dict(RECIPE), out, resume=resume, progress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[slimkit.Run, Path]:
    """The uninterrupted run every interrupted one must end identical to, and its folder."""
    out = tmp_path_factory.mktemp("reference") / "run"
    return _run(out), out


def _assert_same_run(run: slimkit.Run, reference: slimkit.Run, out: Path) -> None:
    for (name, a), b in zip(reference.model.state_dict().items(), run.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    for phase in ("dense", "compressed"):
        ours, theirs = run.metrics["models"][phase], reference.metrics["models"][phase]
        assert ours["test_acc"] == theirs["test_acc"]
        assert [{k: v for k, v in r.items() if k != "seconds"} for r in ours["history"]] == [
            {k: v for k, v in r.items() if k != "seconds"} for r in theirs["history"]]
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"
    assert json.loads((out / "metrics.json").read_text())["models"]["compressed"]["test_acc"] == ours["test_acc"]
    assert slimkit.load(out / "model.pt") is not None


@pytest.mark.slow
@pytest.mark.parametrize("name,nth", [("checkpoint.pt", 3),  # compressed epoch 2, over epoch 1's checkpoint
                                      ("best.pt", 1), ("model.pt", 1), ("metrics.json", 1)])
def test_a_kill_at_a_write_resumes_to_the_same_result(tmp_path, reference, name, nth):
    out = tmp_path / "run"
    run_killed_at_write(RECIPE, out, name, nth)
    assert list(out.rglob(f".{name}.*.tmp")), "the kill should leave its temporary file"
    if name == "checkpoint.pt":
        assert safe_load(out / "compressed" / name, CHECKPOINT_FORMAT)["epoch"] == 0  # the previous one stays
    _assert_same_run(_run(out, resume=True), reference[0], out)


@pytest.mark.slow
def test_a_kill_at_the_recipe_rewrite_of_a_resume(tmp_path, reference):
    out = tmp_path / "run"
    run_killed_at_write(RECIPE, out, "checkpoint.pt", 2)
    run_killed_at_write(RECIPE, out, "recipe.yaml", 1, resume=True)
    assert list(out.glob(".recipe.yaml.*.tmp"))
    assert Recipe.load(str(out / "recipe.yaml")).to_yaml() == Recipe.from_dict(RECIPE).to_yaml()
    _assert_same_run(_run(out, resume=True), reference[0], out)


def test_a_full_disk_at_a_checkpoint_exits_2_and_keeps_the_previous_one(tmp_path, reference, monkeypatch, capsys):
    out, real_save, writes = tmp_path / "run", torch.save, []

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        if Path(getattr(f, "name", "")).name.startswith(".checkpoint.pt."):
            writes.append(f.name)
            if len(writes) == 3:  # compressed epoch 2: epoch 1's checkpoint is there
                f.write(b"the first bytes")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_on_a_full_disk)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(RECIPE))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out / 'compressed' / 'checkpoint.pt'}: No space left on device" in err
    assert safe_load(out / "compressed" / "checkpoint.pt", CHECKPOINT_FORMAT)["epoch"] == 0
    assert not list(out.rglob("*.tmp")) and not (out / "metrics.json").exists()
    monkeypatch.undo()  # space freed: the resume ends where an uninterrupted run does
    _assert_same_run(_run(out, resume=True), reference[0], out)
