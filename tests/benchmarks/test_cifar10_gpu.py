"""benchmarks/cifar10_gpu.py: it refuses to run without a GPU, and every recipe it runs takes its overrides."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slimkit.recipe import Recipe

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "cifar10_gpu.py"
spec = importlib.util.spec_from_file_location("bench_cifar10_gpu", SCRIPT)
cifar10_gpu = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cifar10_gpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refuses_without_a_gpu_and_writes_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path), "--results", str(tmp_path / "res"),
                           "--runs", str(tmp_path / "runs")], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    assert "sees no CUDA GPU" in done.stderr and "nothing was run" in done.stderr
    assert not (tmp_path / "res").exists() and not (tmp_path / "runs").exists()


def test_every_cifar10_recipe_takes_the_gpu_overrides(tmp_path):
    assert set(cifar10_gpu.PAPERS) <= set(cifar10_gpu.RECIPES)  # a paper figure for a recipe that runs
    assert {"rbnn-cifar10", "recu-cifar10", "siman-cifar10", "irnet-cifar10"} <= set(cifar10_gpu.RECIPES)
    for name in cifar10_gpu.RECIPES:
        recipe = Recipe.load(name, [f"data.path={tmp_path}", "train.device=cuda", "train.precision=bf16",
                                    "data.num_workers=8"])
        assert recipe.data.name == "cifar10" and recipe.data.path == tmp_path
        assert (recipe.train.device, recipe.train.precision, recipe.data.num_workers) == ("cuda", "bf16", 8)
