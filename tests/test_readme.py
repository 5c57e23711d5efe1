"""The README's Python example must run as written (on the bundled digits, so it takes seconds)."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```(?:bash|sh)\n(.*?)```", README, flags=re.DOTALL).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def _run_example(containing: str, tmp_path, monkeypatch, namespace: dict | None = None) -> dict:
    example = next(b for b in re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL) if containing in b)
    monkeypatch.chdir(tmp_path)
    namespace = namespace if namespace is not None else {}
    exec(compile(example, "README.md", "exec"), namespace)
    return namespace


@pytest.mark.slow
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    run = _run_example("slimkit.compress", tmp_path, monkeypatch)["run"]
    assert "| test accuracy |" in capsys.readouterr().out
    assert run.metrics["stages"][0]["achieved_sparsity"] == 0.9
    assert run.metrics["models"]["compressed"]["test_acc"] > 0.8


def test_readme_own_data_example_runs(tmp_path, monkeypatch):
    import torch
    from torch.nn import functional as F

    import slimkit
    import user_code

    torch.manual_seed(0)
    data = user_code.regression_data()
    namespace = {"slimkit": slimkit, "F": F, "model": user_code.regression_model(), "train_set": data["train"],
                 "val_set": data["val"], "test_set": data["test"]}
    run = _run_example("val_data=val_set", tmp_path, monkeypatch, namespace)["run"]
    assert run.metrics["data"]["train"] == len(data["train"]) and run.metrics["objective"]["loss"] == "mse_loss"
    assert run.metrics["stages"][0]["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_readme_loop_example_runs(tmp_path, monkeypatch):
    namespace = _run_example("slimkit.prepare", tmp_path, monkeypatch)
    model, compression = namespace["model"], namespace["compression"]
    assert compression.step_count == 5 * len(namespace["loader"])
    assert [int((model[i].weight == 0).sum()) for i in (0, 2)] == [round(0.8 * 6 * 32), round(0.8 * 32 * 32)]
    assert not any("parametrizations" in name for name, _ in model.named_modules())


def test_readme_channel_example_runs(tmp_path, monkeypatch):
    namespace = _run_example("prune_channels", tmp_path, monkeypatch)
    smaller, plan = namespace["smaller"], namespace["plan"]
    assert (tmp_path / "plan.json").is_file() and plan.modules
    assert smaller(namespace["torch"].randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_readme_deploy_example_runs(tmp_path, monkeypatch, capsys):
    import torch

    namespace = _run_example("slimkit.deploy", tmp_path, monkeypatch)
    run, fast = namespace["run"], namespace["fast"]
    assert "deployed" in capsys.readouterr().out or all(e["reason"] for e in fast.deploy_report)
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(fast(x), run.model.eval()(x), atol=1e-4)
    manifest, engine = namespace["manifest"], namespace["engine"]  # the engine export beside it, measured
    times = manifest["choice"]["artifacts_ms"]
    assert manifest["choice"]["chosen"] == min(times, key=times.get)  # the fastest artifact was written
    assert (tmp_path / "runs" / "readme-engine" / "model.xml").is_file()
    x = torch.rand(64, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(engine(x), run.model.eval()(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_readme_target_example_reaches_its_target_within_the_run_s_own_measured_noise(tmp_path, monkeypatch):
    from slimkit.recipe import Recipe

    monkeypatch.setenv("SLIMKIT_CACHE_DIR", str(tmp_path / "cache"))
    run = _run_example("latency-target", tmp_path, monkeypatch)["run"]
    target, engine = run.metrics["target"], run.metrics["engine"]["batches"]["16"]["latency_ms"]
    measured, dense = target["measured"], {k: v for k, v in engine.items() if k != "engine"}
    assert measured["baseline"] == target["baseline"] == "openvino_fp32"  # the recipe's baseline engine, timed here
    assert measured["speedup"] == pytest.approx(dense[measured["baseline"]]["median"] / engine["engine"]["median"])
    assert measured["noise"] == pytest.approx(measured["speedup"] * (
        engine["engine"]["iqr"] / engine["engine"]["median"] + dense[measured["baseline"]]["iqr"]
        / dense[measured["baseline"]]["median"]))
    assert target["predicted_ms"] <= target["target_ms"] == pytest.approx(target["baseline_ms"] / 1.5)
    assert measured["speedup"] + measured["noise"] >= 1.5, measured  # reached, within the measured noise
    for line in target["layers"]:  # no layer runs a form that measured slower than its dense form
        timed = target["tables"][line["layer"]].get(f"{line['form']} w{line['out_channels']}")
        if isinstance(timed, dict) and not (line["form"] == "fp32" and timed["median"] == line["dense_ms"]):
            assert timed["median"] < line["dense_ms"]
    folder = tmp_path / "runs" / "latency-target"
    chosen = Recipe.load(folder / "target-recipe.yaml")
    assert chosen.to_yaml() == run.recipe.to_yaml() and chosen.stages and chosen.target is None
    assert "## Latency target" in (folder / "report.md").read_text()


def test_readme_one_shot_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from slimkit.sparsity.nm import is_nm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = _run_example("slimkit.one_shot", tmp_path, monkeypatch)["model"]
    blocks = model.transformer.h
    assert len(blocks) == 2 and not model.training
    for block in blocks:
        for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            assert is_nm(layer.weight.t(), 2, 4) and int((layer.weight == 0).sum()) == layer.weight.numel() // 2


def test_readme_transformer_export_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("onnxruntime")
    import torch

    from slimkit.quant.onnx_export import OnnxModel
    from test_transformer_export import clear_inputs, tokens

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    namespace = _run_example("export_openvino(bert", tmp_path, monkeypatch)
    bert = namespace["bert"]
    inputs = clear_inputs(bert, tokens)  # another batch and sequence length, no value near a rounding boundary
    with torch.no_grad():
        expected = bert(**inputs).logits
    got = OnnxModel(tmp_path / "runs" / "bert.onnx")(**inputs)
    assert got.shape == expected.shape and float((got - expected).abs().max()) < 1e-4
    assert (tmp_path / "runs" / "bert-openvino" / "model.xml").is_file()
