"""Every sparsity method end to end: from a recipe, to its exact structure, through a kill and a resume."""

import copy
import json

import pytest
import torch

from interrupts import Interrupt, interrupt_after
from slimkit import cli
from slimkit.errors import RecipeError
from slimkit.formats import CHECKPOINT_FORMAT, safe_load
from slimkit.persistence import read_artifacts
from slimkit.pipeline import run_recipe
from slimkit.recipe import Recipe
from slimkit.sparsity import is_balanced, is_nm, is_pattern_valid
from slimkit.sparsity.blocks import is_block_sparse
from slimkit.sparsity.pattern import PATTERN_LIBRARY, candidate_patterns, kernels_kept, stored_library
from slimkit.sparsity.topk import keep_count

STAGES = {
    "magnitude": {"method": "magnitude", "sparsity": 0.75},
    "gmp-taylor": {"method": "gmp", "criterion": "taylor", "sparsity": 0.75, "scope": "global", "end_epoch": 2},
    "snip": {"method": "snip", "sparsity": 0.75},
    "optg": {"method": "optg", "sparsity": 0.75, "end_epoch": 3},
    "movement": {"method": "movement", "sparsity": 0.75, "end_epoch": 2},
    "nm": {"method": "nm", "n": 1, "m": 3, "end_epoch": 2},
    "sense": {"method": "sense", "sparsity": 0.5, "tile": 2, "end_epoch": 2},
    "patdnn": {"method": "patdnn", "connectivity": 2.0, "admm_epochs": 1},
}


def _recipe(base: dict, stage: dict) -> Recipe:
    data = copy.deepcopy(base)
    data["model"] = {"name": "lenet", "width": 0.5, "options": {"kernel_size": 3}}
    data["baseline"]["epochs"] = 2
    data["stages"] = [{"prune": stage}]
    return Recipe.from_dict(data)


def _layers(model):
    return {"features.3": model.features[3].weight, "classifier.1": model.classifier[1].weight}


def _check_structure(name: str, model) -> None:
    weights = _layers(model)
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    total = sum(w.numel() for w in weights.values())
    if name == "nm":
        assert all(is_nm(w, 1, 3) for w in weights.values())
        assert not any(is_nm(w, 1, 4) for w in weights.values())
    elif name == "sense":
        assert all(is_balanced(w, 2, 0.5) for w in weights.values())
        assert zeros >= total // 2
    elif name == "patdnn":
        conv = weights["features.3"]  # the library check is in test_pattern_library_is_saved_with_the_model
        assert int((conv.reshape(-1, 9) != 0).any(1).sum()) == kernels_kept(conv.shape[0] * conv.shape[1], 2.0)
        assert bool(((conv.reshape(-1, 9) != 0).sum(1) <= 4).all())
        assert int((weights["classifier.1"] == 0).sum()) == 0  # patdnn selects convs only by default
    else:
        assert zeros == total - keep_count(total, 0.75)


STRUCTURE = {"nm": {"structure": "1:3", "n": 1, "m": 3}, "patdnn": {"structure": "pattern", "kernels_kept": 125,
                                                                   "kernels": 250, "patterns": 8}}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STAGES))
def test_method_reaches_its_structure_and_resumes_identically(tmp_path, digits_recipe, name, capsys):
    recipe = _recipe(digits_recipe, STAGES[name])
    full = run_recipe(recipe, tmp_path / "full", progress=False)
    _check_structure(name, full.model)
    capsys.readouterr()
    assert cli.main(["info", str(tmp_path / "full"), "--json"]) == 0
    layer = next(x for x in json.loads(capsys.readouterr().out)["layers"] if x["name"] == "features.3")
    found = {k: v for k, v in layer.items() if k in ("structure", "n", "m", "kernels_kept", "kernels", "patterns",
                                                     "tile", "kept_per_group", "group_size")}
    expected = STRUCTURE.get(name, {"structure": "unstructured"})
    if name == "sense":
        expected = {"structure": "balanced", "tile": 2, "kept_per_group": 9, "group_size": 18}
    assert found == expected
    conv = full.model.features[3]
    assert layer["nonzeros"] == int((conv.weight != 0).sum()) + int((conv.bias != 0).sum())
    assert full.metrics["models"]["compressed"]["test_acc"] > 0.3  # it learned (chance is 0.1)
    with pytest.raises(Interrupt):  # 2 baseline epochs, then 2 of the 4 compressed ones
        run_recipe(recipe, tmp_path / "killed", progress=False, callbacks=(interrupt_after(4),))
    state = safe_load(tmp_path / "killed" / "compressed" / "checkpoint.pt", CHECKPOINT_FORMAT)
    assert state["epoch"] == 1
    resumed = run_recipe(recipe, tmp_path / "killed", resume=True, progress=False)
    for (key, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), key


def test_pattern_library_is_saved_with_the_model_and_checks(tmp_path, digits_recipe, capsys):
    run = run_recipe(_recipe(digits_recipe, STAGES["patdnn"]), tmp_path, progress=False)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    library = torch.as_tensor(saved["stages"][0]["state"]["library"])
    assert library.shape == (8, 9) and bool(library[:, 4].all())
    assert is_pattern_valid(run.model.features[3].weight, library)
    summary = run.metrics["stages"][0]
    assert summary["library"] == library.int().tolist()
    # exported by name beside model.pt, and read back by name from the model file's stages
    exported = json.loads((tmp_path / PATTERN_LIBRARY).read_text())
    assert torch.equal(torch.tensor(exported["patterns"], dtype=torch.bool), library)
    assert torch.equal(stored_library(read_artifacts(saved["stages"])), library)

    def info_structure(folder) -> str:
        assert cli.main(["info", str(folder), "--json"]) == 0
        layers = json.loads(capsys.readouterr().out)["layers"]
        return next(layer["structure"] for layer in layers if layer["name"] == "features.3")

    assert info_structure(tmp_path) == "pattern"
    # `slimkit info` checks kernels against the stored library: a library of other patterns fails them
    others = torch.stack([p for p in candidate_patterns() if not (p == library).all(1).any()][:8])
    saved["stages"][0]["state"]["library"] = others
    (tmp_path / "other").mkdir()
    torch.save(saved, tmp_path / "other" / "model.pt")
    assert info_structure(tmp_path / "other") != "pattern"


def test_sense_rearrangement_keeps_the_function():
    from slimkit.models import lenet
    from slimkit.sparsity.rearrange import rearrange_channels, zero_fractions

    torch.manual_seed(0)
    model = lenet(in_channels=1, input_size=8, width=0.5, kernel_size=3).eval()
    x = torch.rand(64, 1, 8, 8)
    before = model(x)
    perms = rearrange_channels(model, [x], ["features.3", "classifier.1"])
    assert set(perms) == {"features.0", "features.3"} and sorted(perms["features.3"]) == list(range(25))
    assert torch.allclose(model(x), before, atol=1e-5)
    after = zero_fractions(model, ["features.3"], [x])["features.3"]
    assert bool((after[1:] >= after[:-1]).all())  # tiles now hold channels of similar sparsity


def test_sense_rearrangement_on_a_resnet_moves_only_untied_channels():
    from slimkit.models import resnet20
    from slimkit.sparsity.rearrange import rearrange_channels

    torch.manual_seed(0)
    model = resnet20(width=0.5).eval()
    for m in model.modules():  # non-trivial BN statistics, so a wrong permutation would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(8, 3, 32, 32)
    before = model(x)
    perms = rearrange_channels(model, [x], [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)])
    assert perms and all(name.endswith("conv1") for name in perms)  # block conv2 outputs are tied by the adds
    assert torch.allclose(model(x), before, atol=1e-4)


BUNDLED = {
    "optg-90": ["train.epochs=2"],
    "movement-90": ["train.epochs=2", "stages.0.prune.start_epoch=0", "stages.0.prune.end_epoch=1"],
    "snip-90": ["train.epochs=2"],
    "gmp-taylor-90": ["train.epochs=2", "stages.0.prune.start_epoch=0", "stages.0.prune.end_epoch=1"],
    "nm-2-4": ["train.epochs=1", "baseline.epochs=1"],
    "sense-50": ["train.epochs=2", "baseline.epochs=1", "stages.0.prune.end_epoch=1"],
    "patdnn": ["train.epochs=2", "baseline.epochs=1", "stages.0.prune.admm_epochs=1"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUNDLED))
def test_bundled_recipe_runs_through_the_cli(tmp_path, name, capsys):
    code = cli.main(["run", name, "--out", str(tmp_path), "--no-progress", "data.name=digits", *BUNDLED[name]])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "model.pt").exists() and (tmp_path / "report.md").exists()


@pytest.mark.slow
def test_patdnn_input_blocks_train_to_the_int8_operator_layout(tmp_path, digits_recipe):
    """block: 4 from a recipe: every kept kernel's 4-channel block shares its pattern, so the layer is block-4
    sparse (what slimkit::QuantSparseConv2d runs), and ceil(tiles / r_c) (filter, block) tiles are kept."""
    run = run_recipe(_recipe(digits_recipe, {**STAGES["patdnn"], "block": 4}), tmp_path, progress=False)
    weight = run.model.features[3].weight
    library = torch.as_tensor(run.metrics["stages"][0]["library"]).bool()
    assert is_block_sparse(weight, 4) and is_pattern_valid(weight, library)
    out, channels = weight.shape[:2]
    tiles = (weight != 0).reshape(out, channels, 9).any(-1)[:, ::4]
    assert int(tiles.sum()) == kernels_kept(out * -(-channels // 4), 2.0)
    with pytest.raises(RecipeError, match=r"prune\.block.*one of 1, 2, 4, 8, 16.*not 3"):
        _recipe(digits_recipe, {**STAGES["patdnn"], "block": 3})


@pytest.mark.slow
def test_patdnn_filter_groups_train_to_shared_structure(tmp_path, digits_recipe):
    """filter_group: 2 from a recipe: after ADMM and retraining, each pair of filters keeps identical
    kernels and patterns, and the layer keeps ceil(blocks / r_c) (pair, channel) blocks."""
    run = run_recipe(_recipe(digits_recipe, {**STAGES["patdnn"], "filter_group": 2}), tmp_path, progress=False)
    support = run.model.features[3].weight != 0
    out, channels = support.shape[:2]
    pairs = out // 2 * 2  # an odd last filter is a group of its own
    assert bool((support[0:pairs:2] == support[1:pairs:2]).all())
    blocks = support.reshape(out, channels, 9).any(-1)[::2]
    assert int(blocks.sum()) == kernels_kept(-(-out // 2) * channels, 2.0)
    assert run.metrics["models"]["compressed"]["test_acc"] > 0.3
