"""One recipe, end to end: data, model, optional dense baseline, compression, measurement, report.

A run directory holds recipe.yaml, environment.json, each phase's checkpoints, model.pt, metrics.json and
report.md with its plots. Killing a run loses at most the epoch in progress: --resume picks it up.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from slimkit.data import DataBundle, load_data
from slimkit.environment import environment
from slimkit.errors import RecipeError, SlimkitError, first_line
from slimkit.files import atomic_write_text, remove_stale_temps
from slimkit.formats import WEIGHTS_FORMAT, atomic_save, read_checkpoint
from slimkit.locks import FolderLock
from slimkit.methods import build_modifier
from slimkit.metrics import call, compare_latency, example_batch, example_shape, measure
from slimkit.models import ModelConfig, build_model
from slimkit.persistence import load_weights, save_artifacts, save_model
from slimkit.recipe import Recipe, normalized_yaml
from slimkit.report import Report
from slimkit.target_recipe import targeted_recipe
from slimkit.train import distributed
from slimkit.train.config import TrainConfig
from slimkit.train.device import check_precision, resolve_device
from slimkit.train.modifier import Modifier
from slimkit.train.objective import Objective, logits_of
from slimkit.train.progress import console
from slimkit.train.trainer import EpochCallback, Trainer, TrainResult, evaluate
from slimkit.value_checks import check_model_values


@dataclass
class Run:
    """What a finished run hands back: the compressed model, its metrics and its report. Both models are on the
    CPU, whichever device trained them."""

    recipe: Recipe
    model: nn.Module
    dense_model: nn.Module
    metrics: dict[str, Any]
    out_dir: Path | None

    @property
    def report(self) -> Report:
        return Report(self.metrics)


def _recipe_on_disk(path: Path) -> tuple[str | None, str | None]:
    """(text, None) of a readable recipe.yaml, or (None, why not): missing, empty, or torn (not a YAML mapping),
    as a kill mid-write by a version from before atomic writes left it."""
    if not path.exists():
        return None, "missing"
    text = path.read_text()
    if not text.strip():
        return None, "empty"
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = None
    return (text, None) if isinstance(parsed, dict) else (None, "torn (not a complete YAML mapping)")


def _checkpointed_recipe(out_dir: Path) -> tuple[str | None, Path | None]:
    """The recipe text kept in the run's latest checkpoint (compressed, else dense) and that checkpoint; (None,
    None) when no checkpoint keeps one (written before recipes were kept)."""
    for phase in ("compressed", "dense"):
        path = out_dir / phase / "checkpoint.pt"
        if path.exists():
            recipe_text = read_checkpoint(path).get("recipe")
            return (recipe_text, path) if recipe_text is not None else (None, None)
    return None, None


def _prepare_out_dir(out_dir: Path, recipe: Recipe, resume: bool, env: dict[str, Any]) -> None:
    """Create or re-open the run folder. A resume checks this recipe against the run's recipe of record, the
    copy in its latest checkpoint (else recipe.yaml), and restores an empty or torn recipe.yaml from it."""
    started = any((out_dir / phase / "checkpoint.pt").exists() for phase in ("dense", "compressed"))
    if started and not resume:
        raise SlimkitError(f"{out_dir} already holds a run; pass --resume to continue it, or choose another --out")
    if started:
        saved, problem = _recipe_on_disk(out_dir / "recipe.yaml")
        kept, checkpoint = _checkpointed_recipe(out_dir)
        if problem not in (None, "missing"):
            if kept is None:
                raise SlimkitError(f"{out_dir}/recipe.yaml is {problem} (torn by a kill while it was written, "
                                   f"before writes were atomic), and the checkpoint keeps no copy; delete it to "
                                   f"resume with this recipe")
            console.print(f"{out_dir}/recipe.yaml is {problem}; restoring it from {checkpoint}", highlight=False)
        reference, source = (kept, f"the recipe kept in {checkpoint}") if kept is not None else (
            saved, f"{out_dir}/recipe.yaml")
        if reference is not None and normalized_yaml(reference) != recipe.to_yaml():
            raise SlimkitError(f"{source} differs from this recipe; resume with the same recipe and overrides, or "
                               f"choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out_dir)  # what a kill mid-write left behind
    atomic_write_text(out_dir / "recipe.yaml", recipe.to_yaml())  # equal to the recipe of record on a resume
    atomic_write_text(out_dir / "environment.json", json.dumps(env, indent=2))


def _stage_sparsity(summary: dict[str, Any], dense: dict[str, Any], comp: dict[str, Any]) -> dict[str, Any]:
    """Add the measured sparsity of the layers a pruning stage covered, before and after."""
    names = set(summary.get("layers", []))
    if "target_sparsity" not in summary or not names:
        return summary

    def sparsity(measurement: dict[str, Any]) -> float:
        layers = [layer for layer in measurement["layers"] if layer["name"] in names]
        numel = sum(math.prod(layer["shape"]) for layer in layers)
        return 1 - sum(layer["weight_nonzeros"] for layer in layers) / max(1, numel)

    return {**summary, "dense_sparsity": sparsity(dense), "achieved_sparsity": sparsity(comp)}


def _image_facts(example: Any) -> tuple[int | None, int | None]:
    """(channels, size) of image inputs, for building a zoo model; (None, None) for other inputs."""
    shape = tuple(example.shape[1:]) if isinstance(example, torch.Tensor) else example
    return (shape[0], shape[-1]) if isinstance(shape, tuple) and len(shape) == 3 else (None, None)


def _check_model_fits_data(model: nn.Module, example: Any, data: DataBundle, objective: Objective) -> None:
    """One forward on a data sample before anything trains: inputs the model cannot take, or a class count
    that differs from the data's, are errors now rather than after a baseline (model.in_channels,
    input_size and num_classes are the keys to look at)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = logits_of(call(model, example_batch(example, 2, model=model)))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise SlimkitError(f"the model does not run on the data's inputs (per sample {example_shape(example)}): "
                           f"{first_line(exc)}. Check model.in_channels and model.input_size against the data"
                           ) from None
    finally:
        model.train(was_training)
    names = data.classes or []
    if names and objective.loss_fn is None and logits.ndim == 2 and logits.shape[1] != len(names):
        raise SlimkitError(f"the model outputs {logits.shape[1]} classes and the data has {len(names)} "
                           f"({', '.join(map(str, names[:5]))}...); set model.num_classes to {len(names)}")


def _engine_comparison(dense: nn.Module, compressed: nn.Module, example: Any, data: DataBundle, recipe: Recipe,
                       out_dir: Path | None) -> dict[str, Any]:
    """measure.engines: the compressed model deployed in OpenVINO with slimkit's operators (the artifact lands
    in the run's engine/ folder) against the dense model in the engines users deploy with, the int8 ones
    calibrated on the first training batches."""
    from slimkit.runtime.bench import engine_versus_dense

    calibration = data.input_batches(4, recipe.data.batch_size)
    m = recipe.measure
    with tempfile.TemporaryDirectory() as tmp:
        folder = out_dir / "engine" if out_dir is not None else Path(tmp) / "engine"
        shape = list(example.shape[1:]) if isinstance(example, Tensor) else list(example)
        try:
            return engine_versus_dense(dense, compressed, shape, calibration, folder,
                                       batch_sizes=m.batch_sizes, threads=m.threads, repeats=m.repeats)
        except SlimkitError as exc:  # a model the engine cannot take: the trained run is still saved and reported
            console.print(f"measure.engines: {exc}", style="yellow", highlight=False)
            return {"error": str(exc)}


def _hardware_costs(dense: nn.Module, compressed: nn.Module, data: DataBundle, recipe: Recipe) -> dict[str, Any]:
    """measure.hardware: the compressed and the dense model on the hardware targets the recipe names, with
    activation sparsity measured on the first training batches (slimkit.hardware; docs/hardware.md)."""
    from slimkit.hardware import hardware_section

    config = recipe.measure.hardware
    if config is None:
        raise SlimkitError("measure.hardware names no hardware target to cost")
    count = config.systolic.calibration_batches if config.systolic is not None else 1
    return hardware_section(compressed, data.input_batches(count, recipe.data.batch_size), config, dense=dense)


def _evaluated_split(data: DataBundle) -> str:
    """The split the report judges quality on: test, else validation; training data only when nothing is
    held out, and then the report says so."""
    return next(split for split in ("test", "val", "train") if getattr(data, split) is not None)


def _runnable_objective(recipe: Recipe, objective: Objective | None) -> Objective:
    """The run's objective (the given one, else the recipe's), after the checks that stop a run before anything
    loads: a file the recipe names that is missing, a device or precision this machine lacks, label smoothing
    on a loss other than the default cross-entropy."""
    missing = recipe.missing_files()
    if missing:
        raise RecipeError(missing)
    phases = (("baseline", recipe.baseline), ("train", recipe.train))
    for key, config in phases:
        if config is not None:
            check_precision(config.precision, resolve_device(config.device, f"{key}.device"), f"{key}.precision")
    objective = objective if objective is not None else recipe.objective.build()
    smoothing = [(key, c.label_smoothing) for key, c in phases if c is not None and c.label_smoothing]
    if smoothing and objective.loss_fn is not None:
        raise RecipeError([f"'{key}.label_smoothing': {value} applies to the default cross-entropy, and this run "
                           f"uses loss {objective.describe()['loss']!r}; set it to 0" for key, value in smoothing])
    return objective


def _starting_model(recipe: Recipe, model: nn.Module | None, data: DataBundle, example: Any) -> tuple[nn.Module, str]:
    """(the model to compress, its label): the given one, moved to the CPU (each phase's Trainer takes it to
    train.device), or the recipe's, built for the data's shape and loaded from model.checkpoint."""
    if model is not None:
        return model.cpu(), type(model).__name__
    if recipe.model is None:
        raise RecipeError(["'model': required key is missing (or pass a model to slimkit.compress)"])
    channels, size = _image_facts(example)
    model = build_model(recipe.model, channels, data.num_classes, size)
    if recipe.model.checkpoint is not None:
        load_weights(model, recipe.model.checkpoint)
    return model, recipe.model.label


def _checked_modifiers(recipe: Recipe, model: nn.Module, example: Any, data: DataBundle,
                       objective: Objective) -> list[Modifier]:
    """The stages' modifiers, after every check that runs on the built model before anything trains (rather
    than after the baseline): finite weights and no empty layer, the model runs on the data, engines get one
    tensor input, each method's own check. Modifiers are built now and trained later, so files they read are
    read once."""
    check_model_values(model)  # no NaN or Inf, no layer without weights: before a forward meets either
    _check_model_fits_data(model, example, data, objective)
    if (recipe.measure.engines or recipe.target is not None) and isinstance(example, dict):
        key = "'target'" if recipe.target is not None else "'measure.engines': true"
        raise RecipeError([f"{key}: engine deployment takes models with one tensor input, and this model takes a dict "
                           f"of them"])
    modifiers = [build_modifier(stage) for stage in recipe.stages]
    issues = [f"'stages[{i}].{stage.kind}.{issue[1:]}" for i, (stage, modifier) in
              enumerate(zip(recipe.stages, modifiers, strict=True)) for issue in modifier.check(model)]
    if issues:
        raise RecipeError(issues)
    return modifiers


def _train_phases(recipe: Recipe, model: nn.Module, modifiers: list[Modifier], data: DataBundle,
                  objective: Objective, out_dir: Path | None, *, resume: bool, progress: bool,
                  callbacks: tuple[EpochCallback, ...], example: Any
                  ) -> tuple[TrainResult, TrainResult, Recipe, dict[str, Any] | None]:
    """(dense, compressed, the recipe the compressed phase ran, the target's choice or None): the trained
    baseline (or the model as given) and the compressed copy of it, each phase trained by its own Trainer with its
    own checkpoints in out_dir/<phase>. A recipe with a target gets its stages from the target, chosen on the
    trained dense model (target_recipe); both phases keep the recipe as given as their recipe of record."""

    def train(net: nn.Module, phase: str, config: TrainConfig, phase_modifiers: list[Modifier]) -> TrainResult:
        trainer = Trainer(net, data, config, phase_modifiers, recipe=recipe.to_yaml(),
                          batch_size=recipe.data.batch_size, eval_batch_size=recipe.data.eval_batch_size,
                          num_workers=recipe.data.num_workers, pin_memory=recipe.data.pin_memory,
                          out_dir=out_dir / phase if out_dir else None, seed=recipe.seed, label=phase,
                          progress=progress, callbacks=callbacks,
                          objective=replace(objective, label_smoothing=config.label_smoothing))
        return trainer.fit(resume=resume)

    dense = train(model, "dense", recipe.baseline, []) if recipe.baseline else TrainResult(model.eval())
    ran = recipe
    choice: dict[str, Any] | None = None  # the target's record
    if recipe.target is not None:
        shape = list(example.shape[1:]) if isinstance(example, Tensor) else list(example)
        ran, choice = targeted_recipe(recipe, dense.model.cpu(), data, objective, shape, out_dir, resume)
        modifiers = _checked_modifiers(ran, dense.model, example, data, objective)
    return dense, train(copy.deepcopy(dense.model), "compressed", recipe.train, modifiers), ran, choice


def _measured_phases(phases: dict[str, TrainResult], data: DataBundle, split: str, example: Any, recipe: Recipe,
                     objective: Objective, is_main: bool) -> dict[str, Any]:
    """Per phase: test loss and metric on `split`, best epoch, training time, history and the measurement;
    rank 0 also times the phases' latency, taking turns. Each model ends on the CPU, where it is measured,
    timed, saved and exported."""
    m = recipe.measure
    metric = objective.metric.name if objective.metric is not None else None
    models: dict[str, Any] = {}
    for phase, result in phases.items():
        test_loss, test_metric = evaluate(result.model, getattr(data, split), recipe.data.eval_batch_size, objective,
                                          num_workers=recipe.data.num_workers, pin_memory=recipe.data.pin_memory)
        result.model.cpu()  # evaluated where it trained
        models[phase] = {
            "test_loss": test_loss, **({f"test_{metric}": test_metric} if metric else {}),
            "best_epoch": result.best_epoch, "train_seconds": result.seconds, "history": result.history,
            "measurement": measure(result.model, example, threads=m.threads, latency=False).to_dict(),
        }
    if is_main:
        latency = compare_latency({phase: result.model for phase, result in phases.items()}, example,
                                  batch_sizes=m.batch_sizes, threads=m.threads, warmup=m.warmup, repeats=m.repeats)
        for phase, timings in latency.items():
            models[phase]["measurement"]["latency_ms"] = timings
    return models


def _write_run(out_dir: Path, arch: ModelConfig | None, data: DataBundle, compressed: TrainResult,
               metrics: dict[str, Any]) -> None:
    """The finished run's files: model.pt (a zoo model: weights and architecture) or weights.pt (a user's
    model: its state_dict), the files its methods export (a channel plan, ...), metrics.json and the report."""
    if arch is not None:
        save_model(compressed.model, out_dir / "model.pt", arch, data.in_channels, data.num_classes,
                   data.input_size, compressed.modifiers)
    else:
        atomic_save({"format": WEIGHTS_FORMAT, "model": compressed.model.state_dict()}, out_dir / "weights.pt")
    save_artifacts(compressed.modifiers, out_dir)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    Report(metrics).write(out_dir)


def run_recipe(recipe: Recipe, out_dir: Path | None = None, *, resume: bool = False,
               model: nn.Module | None = None, data: DataBundle | None = None, progress: bool = True,
               callbacks: tuple[EpochCallback, ...] = (), objective: Objective | None = None) -> Run:
    """Run `recipe`. `model`, `data` and `objective` replace the recipe's model, data and objective
    sections when given."""
    objective = _runnable_objective(recipe, objective)
    out_dir = Path(out_dir) if out_dir is not None else None
    with _one_writer(out_dir):
        return _run_claimed(recipe, out_dir, resume, model, data, progress, callbacks, objective)


@contextmanager
def _one_writer(out_dir: Path | None) -> Iterator[None]:
    """The run folder claimed by this process while it runs (slimkit.locks): a run already writing there is an
    error naming it, and a dead one's lock is taken over and said so. Nothing is claimed without a folder, or
    by a rank other than 0 (it writes no file)."""
    if out_dir is None or not distributed.current().is_main:
        yield
        return
    with FolderLock(out_dir, "run") as claimed:
        if claimed.take_over_note is not None:
            console.print(claimed.take_over_note, style="yellow", highlight=False)
        yield


def _run_claimed(recipe: Recipe, out_dir: Path | None, resume: bool, model: nn.Module | None,
                 data: DataBundle | None, progress: bool, callbacks: tuple[EpochCallback, ...],
                 objective: Objective) -> Run:
    """run_recipe once the recipe is runnable and the run folder, if any, is this process's."""
    info = distributed.current()
    env = environment(recipe.seed)
    if out_dir is not None and info.is_main:
        _prepare_out_dir(out_dir, recipe, resume, env)
    torch.manual_seed(recipe.seed)
    data = data if data is not None else load_data(recipe.data)
    # a user's own model (given, or built by an import path) has no zoo architecture to save with it
    arch = recipe.model if model is None and recipe.model is not None and recipe.model.name else None
    example = data.input_shape if data.images is not None else data.example(objective.target_key)
    model, model_label = _starting_model(recipe, model, data, example)
    modifiers = _checked_modifiers(recipe, model, example, data, objective)
    split = _evaluated_split(data)
    dense, compressed, recipe, choice = _train_phases(recipe, model, modifiers, data, objective, out_dir,
                                                      resume=resume, progress=progress, callbacks=callbacks,
                                                      example=example)
    models = _measured_phases({"dense": dense, "compressed": compressed}, data, split, example, recipe, objective,
                              info.is_main)
    m = recipe.measure
    engine = _engine_comparison(dense.model, compressed.model, example, data, recipe, out_dir) if (
        m.engines and info.is_main) else None
    hardware = _hardware_costs(dense.model, compressed.model, data, recipe) if (
        m.hardware is not None and info.is_main) else None
    metrics = {
        "recipe": recipe.name,
        "model": model_label,
        "reference": "trained" if recipe.baseline else "given",
        "objective": objective.describe(),
        "data": {"name": data.name, "train": data.size("train"), "val": data.size("val"),
                 "test": data.size("test"), "eval_split": split,
                 "input_shape": models["dense"]["measurement"]["input_shape"], "note": data.note},
        "models": models,
        "stages": [_stage_sparsity(s, models["dense"]["measurement"], models["compressed"]["measurement"])
                   for s in compressed.summaries],
        "environment": env | {"threads": models["compressed"]["measurement"]["threads"]},
        **({"engine": engine} if engine else {}),
        **({"hardware": hardware} if hardware else {}),
    }
    if choice is not None:
        from slimkit.target.outcome import with_measurement

        metrics["target"] = with_measurement(choice, engine, models, objective.describe()["metric"])
    if out_dir is not None and info.is_main:
        _write_run(out_dir, arch, data, compressed, metrics)
    return Run(recipe, compressed.model, dense.model, metrics, out_dir)
