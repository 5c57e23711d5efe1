"""train.device, train.precision and the loaders: an explicit CPU run, bf16 autocast, clear errors for what a
machine lacks, loader workers in training and evaluation, and (where a GPU exists) real CUDA runs."""

import copy

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset, TensorDataset, get_worker_info

from slimkit.cli import main
from slimkit.data import DataBundle
from slimkit.errors import RecipeError, SlimkitError
from slimkit.formats import CHECKPOINT_FORMAT, safe_load
from slimkit.models import ModelConfig, build_model
from slimkit.persistence import save_model
from slimkit.pipeline import run_recipe
from slimkit.recipe import Recipe, build_modifier, parse_stage
from slimkit.train import TrainConfig, Trainer, evaluate

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def blobs(n: int, seed: int) -> TensorDataset:
    """Four well-separated classes in 16 dimensions: any model that trains at all gets them right."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centres = torch.eye(4, 16) * 4
    return TensorDataset(centres[y] + torch.randn(n, 16, generator=g), y)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 32), nn.BatchNorm1d(32),
                         nn.ReLU(), nn.Linear(32, 4))


def blob_data() -> DataBundle:
    return DataBundle("blobs", blobs(512, 0), blobs(256, 1), None)


def test_explicit_cpu_device_trains_on_the_cpu():
    data, model = blob_data(), mlp()
    before = evaluate(model, data.val)[1]
    trainer = Trainer(model, data, TrainConfig(epochs=3, lr=0.05, device="cpu"), batch_size=32, progress=False)
    assert trainer.device == torch.device("cpu")
    result = trainer.fit()
    assert {p.device for p in result.model.parameters()} == {torch.device("cpu")}
    assert before < 0.5 and result.history[-1]["val_acc"] > 0.95
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.parametrize("stage", [
    None,
    {"binarize": {"method": "rbnn", "layers": {"include": ["3"]}}},  # its rotation's SVDs must stay fp32
    {"binarize": {"method": "siman", "layers": {"include": ["3"]}}},  # its quantile projection too
    {"quantize": {"method": "uniform", "bits": 4, "first_last_bits": None}},
    {"prune": {"method": "optg", "sparsity": 0.5}},
], ids=lambda s: "dense" if s is None else next(iter(s.values()))["method"])
def test_bf16_on_cpu_trains_with_fp32_weights_and_optimizer_state(tmp_path, stage):
    data, model = blob_data(), mlp()
    seen: list[torch.dtype] = []
    model[6].register_forward_hook(lambda m, args, out: seen.append(out.dtype) if m.training else None)
    modifiers = [build_modifier(parse_stage(stage))] if stage else []
    before = evaluate(model, data.val)[1]
    result = Trainer(model, data, TrainConfig(epochs=4, lr=0.05, precision="bf16", device="cpu"), modifiers,
                     batch_size=32, progress=False, out_dir=tmp_path).fit()
    assert seen and set(seen) == {torch.bfloat16}  # the training forwards ran under bfloat16 autocast
    losses = [r["train_loss"] for r in result.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert before < 0.5 and result.history[-1]["val_acc"] > 0.9
    state = safe_load(tmp_path / "checkpoint.pt", CHECKPOINT_FORMAT)
    floats = [t for t in state["model"].values() if t.is_floating_point()]
    moments = [v for s in state["optimizer"]["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert floats and moments and {t.dtype for t in floats + moments} == {torch.float32}


@no_cuda
def test_cuda_without_cuda_is_an_error_naming_the_key():
    with pytest.raises(SlimkitError, match=r"'train\.device': 'cuda' needs a CUDA GPU, and torch .* sees none; "
                                           r"allowed on this machine: auto, cpu"):
        Trainer(mlp(), blob_data(), TrainConfig(device="cuda"))


@no_cuda
def test_a_run_on_cuda_without_cuda_stops_before_training(tmp_path, digits_recipe, capsys):
    digits_recipe["baseline"]["device"] = "cuda"
    with pytest.raises(SlimkitError, match=r"'baseline\.device': 'cuda' needs a CUDA GPU"):
        run_recipe(Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder, the data or any epoch
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**digits_recipe, "baseline": None}))
    assert main(["run", str(path), "--out", str(tmp_path / "cli"), "--no-progress", "train.device=cuda"]) == 2
    assert "'train.device': 'cuda' needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("device", "gpu", "'auto', 'cpu' or 'cuda'"),
    ("precision", "fp16", "'fp32' or 'bf16'"),
])
def test_unknown_device_or_precision_is_an_error_naming_the_allowed_values(digits_recipe, key, value, allowed):
    digits_recipe["train"][key] = value
    with pytest.raises(RecipeError) as error:
        Recipe.from_dict(digits_recipe)
    assert f"'train.{key}': invalid value '{value}'" in str(error.value) and allowed in str(error.value)


class _InWorkersOnly(Dataset):
    """Refuses to load outside a DataLoader worker: training and evaluation both must use the workers."""

    def __init__(self, data: TensorDataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        assert get_worker_info() is not None, "a sample was loaded in the training process"
        return self.data[i]


@pytest.mark.slow
def test_train_and_eval_loaders_use_the_workers():
    data = DataBundle("blobs", _InWorkersOnly(blobs(256, 0)), _InWorkersOnly(blobs(128, 1)), None)
    result = Trainer(mlp(), data, TrainConfig(epochs=4, lr=0.05), batch_size=64, num_workers=2,
                     progress=False).fit()
    assert result.history[-1]["val_acc"] > 0.9
    assert evaluate(result.model, data.val, num_workers=1)[1] == result.history[-1]["val_acc"]


# --- on a GPU ----------------------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize(("stage", "precision", "least"), [
    ({"prune": {"method": "gmp", "sparsity": 0.8, "start_epoch": 0, "end_epoch": 2}}, "fp32", 0.8),
    ({"prune": {"method": "movement", "sparsity": 0.8, "end_epoch": 2}}, "bf16", 0.6),
    ({"binarize": {"method": "rbnn"}}, "bf16", 0.5),
    ({"binarize": {"method": "siman"}}, "fp32", 0.7),
    ({"quantize": {"method": "uniform", "bits": 4}}, "fp32", 0.8),
    ({"channels": {"method": "gfbs", "ratio": 0.3}}, "fp32", 0.8),
    ({"distill": {"method": "hinton", "weight": 0.1}}, "bf16", 0.8),  # the teacher: a LeNet saved by the test
], ids=lambda v: next(iter(v.values()))["method"] if isinstance(v, dict) else str(v))
def test_a_recipe_trains_on_cuda(tmp_path, digits_recipe, stage, precision, least):
    """Accuracy floors from the same recipes on the CPU (0.93, 0.81, 0.74, 0.90, 0.94, 0.97, 0.94), less a
    margin for the GPU's other random streams."""
    stage = copy.deepcopy(stage)
    if "channels" in stage:  # channel criteria read BatchNorm
        digits_recipe["model"] = {"name": "resnet20", "width": 0.5}
    if "distill" in stage:  # a teacher file loads on the CPU and must follow the student to the GPU
        arch = ModelConfig(name="lenet", width=0.5)
        save_model(build_model(arch, 1, 10, 8), tmp_path / "teacher.pt", arch, 1, 10, 8)
        stage["distill"]["teacher"] = str(tmp_path / "teacher.pt")
    digits_recipe["stages"] = [stage]
    for phase in ("baseline", "train"):
        digits_recipe[phase].update(device="cuda", precision=precision)
    digits_recipe["data"]["num_workers"] = 2
    run = run_recipe(Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    assert run.metrics["models"]["dense"]["test_acc"] > 0.7
    assert run.metrics["models"]["compressed"]["test_acc"] > least
    # the models come back on the CPU, measured there; the checkpoints load on a CPU with weights_only
    assert {p.device.type for p in (*run.model.parameters(), *run.dense_model.parameters())} == {"cpu"}
    state = safe_load(tmp_path / "run" / "compressed" / "checkpoint.pt", CHECKPOINT_FORMAT)
    moments = [v for s in state["optimizer"]["state"].values() for v in s.values() if isinstance(v, torch.Tensor)]
    assert {t.device.type for t in (*state["model"].values(), *state["best"]["model"].values(), *moments)} == {"cpu"}


@needs_cuda
def test_the_trainer_puts_model_and_batches_on_the_gpu():
    data, model = blob_data(), mlp()
    inputs: list[torch.Tensor] = []
    model[0].register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    trainer = Trainer(model, data, TrainConfig(epochs=2, lr=0.05, device="cuda", precision="bf16"), batch_size=32,
                      num_workers=1, progress=False)
    assert trainer.device == torch.device("cuda", 0) and trainer._loader()[0].pin_memory  # auto pins for a GPU
    result = trainer.fit()
    assert {x.device.type for x in inputs} == {"cuda"}
    assert {p.device.type for p in result.model.parameters()} == {"cuda"}
    assert result.history[-1]["val_acc"] > 0.95
