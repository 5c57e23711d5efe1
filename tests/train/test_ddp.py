"""Two CPU processes over gloo under torchrun (two GPUs over NCCL where a machine has them): data-parallel
training agrees across ranks, masks, scores and binarizer state included."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from slimkit.models import lenet

pytestmark = pytest.mark.slow  # every test here trains under torchrun
HERE = Path(__file__).parent


def torchrun(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


GMP = {"method": "gmp", "sparsity": 0.7, "scope": "global", "start_epoch": 0, "end_epoch": 2}


@pytest.mark.parametrize("stage", [
    GMP,
    {**GMP, "criterion": "taylor"},  # gradient scores from here on
    {"method": "snip", "sparsity": 0.7},
    {"method": "optg", "sparsity": 0.7, "end_epoch": 2, "updates_per_epoch": 100},  # more than the steps: every step
    {"method": "movement", "sparsity": 0.7, "end_epoch": 2},
], ids=lambda s: s.get("criterion", s["method"]))
def test_two_ranks_compute_identical_masks_and_scores(tmp_path, stage):
    state = agreed_state(tmp_path, {"prune": stage})
    masks = [m for name, m in state.items() if name.endswith(".mask")]
    assert len(masks) == 2
    total = sum(m.numel() for m in masks)
    assert total - sum(int(m.sum()) for m in masks) == round(0.7 * total)
    scored = stage["method"] in ("optg", "movement")  # their scores train beside the weights: checked too
    assert sum(name.endswith(".scores") for name in state) == (2 if scored else 0)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_one_shot_statistics_are_summed_so_ranks_prune_alike(tmp_path, method):
    """Each rank measures its own batches. Pruned after training (start_epoch = the worker's 3 epochs), so no
    DDP wrapper broadcasts rank 0's result: the ranks agree (finalize compares every tensor's digest, SparseGPT's
    rewritten weights included) only because the statistics are summed over them."""
    stage = {"method": method, "sparsity": 0.7, "calibration_batches": 2, "start_epoch": 3}
    state = agreed_state(tmp_path, {"prune": stage})
    assert all(bool(m.all()) for name, m in state.items() if name.endswith(".mask"))  # not before finalize
    zeros = [json.loads((tmp_path / f"zeros{r}.json").read_text()) for r in (0, 1)]
    model = lenet(in_channels=1, input_size=8, width=0.5)
    for layer in ("features.3", "classifier.1"):  # the selected layers
        weight = model.get_submodule(layer).weight
        assert zeros[0][f"{layer}.weight"] == zeros[1][f"{layer}.weight"] == round(0.7 * weight.numel())


@pytest.mark.parametrize(("stage", "keys"), [
    ({"method": "rbnn"}, {"R1", "R2", "theta", "alpha"}),  # rotations from SVDs on each rank, theta trained
    ({"method": "recu"}, {"tau", "alpha"}),
    ({"method": "siman"}, {"B", "percent", "alpha"}),  # the code each rank writes in its training forwards
], ids=lambda v: v["method"] if isinstance(v, dict) else "")
def test_two_ranks_hold_identical_binarizer_state(tmp_path, stage, keys):
    state = agreed_state(tmp_path, {"binarize": stage})
    for layer in ("features.3", "classifier.1"):  # the binarized layers: all but the first conv and last linear
        assert {name.rsplit(".", 1)[1] for name in state if name.startswith(f"{layer}.weight_binarizer.")} == keys


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("stage", [{"prune": {"method": "movement", "sparsity": 0.7, "end_epoch": 2}},
                                   {"binarize": {"method": "rbnn"}}], ids=lambda s: next(iter(s.values()))["method"])
def test_two_gpus_under_nccl_hold_identical_method_state(tmp_path, stage):
    assert agreed_state(tmp_path, stage, device="cuda")


def agreed_state(tmp_path, stage: dict, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Train `stage` on two ranks; every method tensor must be equal on both (torch.equal), and the process
    group's backend must be gloo on the CPU and NCCL on GPUs. Returns rank 0's method state."""
    done = torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), "agree", json.dumps(stage), device)
    assert done.returncode == 0, done.stderr[-3000:]
    backends = {(tmp_path / f"backend{r}.txt").read_text() for r in (0, 1)}
    if device == "cpu":
        assert backends == {"gloo"}
    else:
        assert all("nccl" in b for b in backends)
    rank0, rank1 = (torch.load(tmp_path / f"state{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0 and rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    return rank0


def test_disagreeing_ranks_are_detected(tmp_path):
    torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), "break", json.dumps({"prune": GMP}))
    errors = [p.read_text() for p in tmp_path.glob("error*.txt")]
    assert errors and all("disagrees with rank 0 on classifier.3.bias" in e for e in errors)


def test_swapped_weights_on_one_rank_are_caught(tmp_path):
    torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), "swap", json.dumps({"prune": GMP}))
    errors = [p.read_text() for p in tmp_path.glob("error*.txt")]
    assert errors and all("disagrees with rank 0 on classifier.3.weight" in e for e in errors)


def test_nan_policy_skip_skips_the_batch_on_every_rank_together(tmp_path):
    done = torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), "nanskip", json.dumps({"prune": GMP}))
    assert done.returncode == 0, done.stderr[-3000:]
    skipped = [json.loads((tmp_path / f"skipped{r}.json").read_text()) for r in (0, 1)]
    assert skipped[0] == skipped[1] == [2, 0, 0]  # rank 1's two NaN batches skipped by both ranks, in epoch 1
    rank0, rank1 = (torch.load(tmp_path / f"state{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[n], rank1[n]) for n in rank0)  # and the ranks still agree (checked at finalize)


def test_cli_run_under_torchrun_writes_once(tmp_path, digits_recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(digits_recipe))
    out = tmp_path / "run"
    # each rank sees half of every epoch, so train longer than the single-process tests do
    done = torchrun("-m", "slimkit.cli", "run", str(path), "--out", str(out), "--no-progress",
                    "baseline.epochs=12", "train.epochs=6")
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stages"][0]["achieved_sparsity"] == pytest.approx(0.8, abs=1e-12)
    assert metrics["models"]["dense"]["test_acc"] > 0.8
    assert metrics["models"]["compressed"]["test_acc"] > 0.8
    assert done.stdout.count("dense (trained baseline) vs compressed") == 1  # only rank 0 reports
    assert "2 ranks hold byte-identical tensors (sha256" in done.stderr  # and says what it checked
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".tmp") == []


def test_gfbs_channel_plans_agree_across_ranks(tmp_path):
    recipe = {
        "name": "ddp-gfbs", "model": {"name": "resnet20", "width": 0.5},
        "data": {"name": "digits", "batch_size": 32},
        "baseline": {"epochs": 2, "lr": 0.05}, "train": {"epochs": 2, "lr": 0.02},
        "stages": [{"channels": {"method": "gfbs", "ratio": 0.5}}],
        "measure": {"batch_sizes": [1], "repeats": 2, "warmup": 1},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    # each rank scores its own batch; the averaged BN gradients must give both ranks one plan
    done = torchrun("-m", "slimkit.cli", "run", str(path), "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    plan = json.loads((out / "plan.json").read_text())["modules"]
    assert plan and json.loads((out / "metrics.json").read_text())["stages"][0]["removed_groups"] > 0
