import os
import pickle

import pytest
import torch
import yaml

from interrupts import Interrupt, interrupt_after
from slimkit.errors import CheckpointError, SlimkitError
from slimkit.formats import CHECKPOINT_FORMAT, atomic_save, safe_load
from slimkit.pipeline import run_recipe
from slimkit.recipe import Recipe


def test_atomic_save_leaves_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    atomic_save({"format": CHECKPOINT_FORMAT, "epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(SlimkitError, match=r"cannot write .*c.pt: disk full"):  # exit 2, naming path and cause
        atomic_save({"format": CHECKPOINT_FORMAT, "epoch": 2}, path)
    monkeypatch.undo()
    assert safe_load(path, CHECKPOINT_FORMAT)["epoch"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_corrupt_and_foreign_checkpoints_are_clear_errors(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04 definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt or is not a slimkit file") as error:
        safe_load(corrupt, CHECKPOINT_FORMAT)
    assert "weights_only" not in str(error.value).split("(")[1]  # torch's advice to turn it off is not passed on
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="found format None"):
        safe_load(foreign, CHECKPOINT_FORMAT)
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_load(tmp_path / "missing.pt", CHECKPOINT_FORMAT)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_loading_never_unpickles_code(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": CHECKPOINT_FORMAT, "x": _RunsCode()}, f)
    with pytest.raises(CheckpointError):
        safe_load(path, CHECKPOINT_FORMAT)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
@pytest.mark.parametrize(("kill_after", "workers", "late_quantize"), [
    (2, 0, False), (5, 0, False),  # in the dense phase, then in the compressed phase
    (5, 2, False),  # two loader processes, each cropping and flipping from its own seeded stream
    # after a quantize stage attached its steps mid-run (start_epoch 2), with momentum: the optimizer's saved
    # state must fit the parameters as a resumed run lists them (a parametrized weight comes after its bias)
    (6, 0, True),
])
def test_resumed_run_matches_uninterrupted_run(tmp_path, digits_recipe, kill_after, workers, late_quantize):
    if workers:
        digits_recipe["data"].update(num_workers=workers, augment="crop_flip")
    if late_quantize:
        digits_recipe["train"]["momentum"] = 0.9
        digits_recipe["stages"].append({"quantize": {"method": "uniform", "bits": 8, "start_epoch": 2}})
    recipe = Recipe.from_dict(digits_recipe)
    full = run_recipe(recipe, tmp_path / "full", progress=False)
    with pytest.raises(Interrupt):
        run_recipe(recipe, tmp_path / "killed", progress=False, callbacks=(interrupt_after(kill_after),))
    assert not (tmp_path / "killed" / "metrics.json").exists()
    resumed = run_recipe(recipe, tmp_path / "killed", resume=True, progress=False)
    for phase in ("dense", "compressed"):
        assert resumed.metrics["models"][phase]["test_acc"] == full.metrics["models"][phase]["test_acc"]
        assert resumed.metrics["models"][phase]["history"] == [
            {k: v for k, v in r.items() if k != "seconds"} | {"seconds": s["seconds"]}
            for r, s in zip(full.metrics["models"][phase]["history"],
                            resumed.metrics["models"][phase]["history"], strict=True)
        ]
        # the training time counts the killed session's epochs too, not only those run after the resume
        resumed_phase = resumed.metrics["models"][phase]
        assert resumed_phase["train_seconds"] >= sum(r["seconds"] for r in resumed_phase["history"])
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_existing_run_needs_resume_and_same_recipe(tmp_path, digits_recipe):
    recipe = Recipe.from_dict(digits_recipe)
    run_recipe(recipe, tmp_path / "run", progress=False)
    with pytest.raises(SlimkitError, match="already holds a run; pass --resume"):
        run_recipe(recipe, tmp_path / "run", progress=False)
    saved = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    del saved["data"]["eval_batch_size"]  # as written before that option existed: its default fills it in
    (tmp_path / "run" / "recipe.yaml").write_text(yaml.safe_dump(saved, sort_keys=False))
    run_recipe(recipe, tmp_path / "run", resume=True, progress=False)
    digits_recipe["train"]["lr"] = 0.5
    with pytest.raises(SlimkitError, match="differs from this recipe"):
        run_recipe(Recipe.from_dict(digits_recipe), tmp_path / "run", resume=True, progress=False)


def test_masks_survive_a_mid_training_checkpoint(tmp_path, digits_recipe):
    digits_recipe["baseline"] = None
    recipe = Recipe.from_dict(digits_recipe)
    with pytest.raises(Interrupt):
        run_recipe(recipe, tmp_path / "run", progress=False, callbacks=(interrupt_after(2),))
    state = safe_load(tmp_path / "run" / "compressed" / "checkpoint.pt", CHECKPOINT_FORMAT)
    masks = {k: v for k, v in state["model"].items() if k.endswith(".mask")}
    assert set(masks) == {"features.3.parametrizations.weight.0.mask", "classifier.1.parametrizations.weight.0.mask"}
    total = sum(m.numel() for m in masks.values())
    assert total - sum(int(m.sum()) for m in masks.values()) == round(0.8 * total)  # window ends at epoch 2
    assert state["modifiers"] == [{"current": 0.8}]
