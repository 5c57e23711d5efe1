"""The README's Python example must run as written (on the bundled digits, so it takes seconds)."""

import re
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    first_block = re.search(r"```(?:bash|sh)\n(.*?)```", README, flags=re.DOTALL).group(1)
    commands = [line.split("#")[0].strip() for line in first_block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]


def _run_example(containing: str, tmp_path, monkeypatch) -> dict:
    example = next(b for b in re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL) if containing in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    return namespace


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    run = _run_example("slimkit.compress", tmp_path, monkeypatch)["run"]
    assert "| test accuracy |" in capsys.readouterr().out
    assert run.metrics["stages"][0]["achieved_sparsity"] == 0.9
    assert run.metrics["models"]["compressed"]["test_acc"] > 0.8


def test_readme_channel_example_runs(tmp_path, monkeypatch):
    namespace = _run_example("prune_channels", tmp_path, monkeypatch)
    smaller, plan = namespace["smaller"], namespace["plan"]
    assert (tmp_path / "plan.json").is_file() and plan.modules
    assert smaller(namespace["torch"].randn(2, 3, 32, 32)).shape == (2, 10)


def test_readme_deploy_example_runs(tmp_path, monkeypatch, capsys):
    import torch

    namespace = _run_example("slimkit.deploy", tmp_path, monkeypatch)
    run, fast = namespace["run"], namespace["fast"]
    assert "deployed" in capsys.readouterr().out or all(e["reason"] for e in fast.deploy_report)
    x = torch.randn(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(fast(x), run.model.eval()(x), atol=1e-4)
