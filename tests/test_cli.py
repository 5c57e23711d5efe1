import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

import slimkit
from slimkit.cli import main


@pytest.fixture
def recipe_file(tmp_path, digits_recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(digits_recipe))
    return path


@pytest.mark.slow
def test_run_writes_a_complete_run_folder(tmp_path, recipe_file, capsys):
    out = tmp_path / "run"
    assert main(["run", str(recipe_file), "--out", str(out), "--no-progress", "train.epochs=3"]) == 0
    for name in ("recipe.yaml", "environment.json", "metrics.json", "report.md", "training.png",
                 "layer_sparsity.png", "model.pt", "dense/best.pt", "dense/checkpoint.pt", "compressed/best.pt"):
        assert (out / name).is_file(), name
    assert not (out / "weights.pt").exists() and not (out / "plan.json").exists()  # zoo model, no channel plan
    assert yaml.safe_load((out / "recipe.yaml").read_text())["train"]["epochs"] == 3
    metrics = json.loads((out / "metrics.json").read_text())
    stage = metrics["stages"][0]
    assert stage["achieved_sparsity"] == pytest.approx(0.8, abs=1e-12) and stage["dense_sparsity"] == 0
    assert metrics["models"]["dense"]["test_acc"] > 0.8  # digits are easy: training really happened
    env = json.loads((out / "environment.json").read_text())
    assert env["seed"] == 0 and env["torch"].startswith("2.13")
    report = (out / "report.md").read_text()
    assert "| test accuracy |" in report and "![training curves](training.png)" in report
    assert "test accuracy" in capsys.readouterr().out

    model = slimkit.load(out / "model.pt")
    zeros = int((model.classifier[1].weight == 0).sum()) + int((model.features[3].weight == 0).sum())
    total = model.classifier[1].weight.numel() + model.features[3].weight.numel()
    assert zeros == round(0.8 * total)

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    by_name = {layer["name"]: layer for layer in info["layers"]}
    assert by_name["features.0"]["structure"] == "dense"
    assert by_name["classifier.1"]["structure"] == "unstructured"
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.md").is_file()


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda r: r["stages"][0]["prune"].update(sparsty=0.9), "'stages[0].prune.sparsty': unknown key"),
    (lambda r: r["stages"][0]["prune"].update(method="nope"), "unknown method 'nope'"),
    (lambda r: r["stages"][0]["prune"].update(sparsity=1.2), "'stages[0].prune.sparsity': invalid value 1.2"),
    (lambda r: r["data"].update(name="mnist", path="/no/such/folder"), "looked for train-images-idx3-ubyte"),
    (lambda r: r["model"].update(name="resnet99"), "'model.name': invalid value 'resnet99'"),
    (lambda r: r["model"].update(checkpoint="/no/such/best.pt"), "'model.checkpoint': /no/such/best.pt does not exist"),
    (lambda r: r["stages"].append({"distill": {"method": "hinton", "teacher": "/no/teacher.pt"}}),
     "'stages[1].distill.teacher': /no/teacher.pt does not exist"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, digits_recipe, capsys, edit, expected):
    edit(digits_recipe)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(digits_recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert expected in capsys.readouterr().err


def test_corrupt_checkpoint_on_resume_exits_2(tmp_path, recipe_file, capsys):
    out = tmp_path / "run"
    (out / "dense").mkdir(parents=True)
    (out / "dense" / "checkpoint.pt").write_bytes(b"garbage")
    assert main(["run", str(recipe_file), "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "is corrupt or is not a slimkit file" in capsys.readouterr().err
    assert (out / "dense" / "checkpoint.pt").read_bytes() == b"garbage"  # nothing was overwritten


@pytest.mark.slow
def test_console_script_reports_misspelt_key(tmp_path, digits_recipe):
    digits_recipe["trian"] = digits_recipe.pop("train")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(digits_recipe))
    exe = shutil.which("slimkit", path=str(__import__("pathlib").Path(sys.executable).parent))
    done = subprocess.run([exe, "run", str(path)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "'trian': unknown key" in done.stderr and "did you mean 'train'?" in done.stderr


def test_version_is_the_installed_distributions_and_the_changelog_names_it(capsys):
    import importlib.metadata
    from pathlib import Path

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    installed = importlib.metadata.version("slimkit")  # what pip recorded when it installed slimkit
    assert capsys.readouterr().out == f"slimkit {installed}\n"
    changelog = (Path(__file__).parents[1] / "CHANGELOG.md").read_text()
    assert f"\n## {installed}\n" in changelog, f"CHANGELOG.md has no section for {installed}"


def test_info_on_zoo_model_and_unknown_name(capsys):
    assert main(["info", "resnet20", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # conv weights 432 + 13,824 + 50,688 + 202,752, fc 650, BN 2 x 688 channels
    assert info["params"] == 269_722 and len(info["layers"]) == 20
    assert main(["info", "resnet99"]) == 2
    assert "zoo models:" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_falls_back_to_digits_and_keeps_accuracy(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("slimkit.data.fashion_mnist_available", lambda: False)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "falls back to the bundled digits" in out
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert metrics["data"]["name"] == "digits"
    channels, quantize = metrics["stages"]
    assert channels["method"] == "channels:l1" and channels["removed_groups"] > 0
    assert quantize["method"] == "quantize:uniform" and quantize["quantized_layers"]
    dense, compressed = (metrics["models"][k] for k in ("dense", "compressed"))
    assert compressed["measurement"]["effective_macs"] < dense["measurement"]["effective_macs"] / 2  # half the channels
    assert dense["test_acc"] > 0.85 and compressed["test_acc"] > dense["test_acc"] - 0.05
    engine = metrics["engine"]  # the demo ends in the engine: the artifact, timed against every dense engine
    assert set(engine["batches"]) == {"1", "64"}
    for batch in ("1", "64"):
        assert (tmp_path / "demo" / "engine" / f"batch-{batch}" / "model.xml").is_file()
        assert {"ort_int8", "openvino_int8", "engine"} <= set(engine["batches"][batch]["latency_ms"])
    assert "In the engines users deploy with" in (tmp_path / "demo" / "report.md").read_text()


def test_compress_of_a_users_own_model_saves_its_weights(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    run = slimkit.compress(model, data="digits", recipe="gmp-90", out_dir=tmp_path / "own",
                           overrides=("train.epochs=3", "stages.0.prune.start_epoch=0", "stages.0.prune.end_epoch=2",
                                      "measure.repeats=2", "measure.batch_sizes=[1]"), progress=False)
    assert (tmp_path / "own" / "weights.pt").is_file() and not (tmp_path / "own" / "model.pt").exists()
    saved = torch.load(tmp_path / "own" / "weights.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], v) for k, v in run.model.state_dict().items())
