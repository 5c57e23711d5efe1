"""The public entry points: `compress` runs a whole recipe on a model and data; `prepare` puts a recipe's
methods into a training loop the user already has; `one_shot` applies them with no training at all."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, Dataset

from slimkit.data import DataBundle, DataConfig, user_data
from slimkit.errors import RecipeError, SlimkitError
from slimkit.methods import MethodConfig, build_modifier, parse_stage, window_issues
from slimkit.pipeline import Run, run_recipe
from slimkit.recipe import Recipe, apply_overrides
from slimkit.target.config import TargetConfig
from slimkit.train.compression import Compression
from slimkit.train.objective import LossFn, Metric, MetricFn, make_objective
from slimkit.value_checks import check_model_values

DataArg = str | DataConfig | DataBundle | Dataset | DataLoader | None


def _objective_given(loss_fn: LossFn | None, metric: Any, target_key: str | None) -> bool:
    return loss_fn is not None or metric != "auto" or target_key is not None


def compress(model: nn.Module, data: DataArg = None, recipe: str | Path | Recipe = "gmp-90", *,
             val_data: Dataset | DataLoader | None = None, test_data: Dataset | DataLoader | None = None,
             loss_fn: LossFn | None = None, metric: Metric | MetricFn | str | None = "auto",
             target_key: str | None = None, classes: Sequence[str] | None = None,
             out_dir: str | Path | None = None, resume: bool = False, overrides: tuple[str, ...] = (),
             progress: bool = True, trust_code: bool = False,
             target: float | TargetConfig | dict[str, Any] | None = None) -> Run:
    """Train and compress `model` as `recipe` says, and measure it against its dense reference.

    `data` is the user's training data (a torch Dataset or DataLoader, with `val_data` and `test_data`
    beside it), a bundled data-set name, a DataConfig or a loaded DataBundle; None uses the recipe's data
    section. `loss_fn(outputs, target)` and `metric` say what the task optimises (default: cross-entropy
    and accuracy, for integer class ids only); `target_key` names the target in dict batches ('labels').
    `recipe` is a Recipe, a YAML path or a bundled recipe name; its model section is ignored. `overrides`
    are 'key.path=value' strings. The report's dense column is the trained baseline when the recipe has a
    `baseline` section, and otherwise `model` as given, labelled so. A recipe file that names code (import
    paths) is imported only with `trust_code=True` or an allow-listed package (docs/guarantees.md); what you
    pass here in Python, overrides included, is your own code and trusted.

    `target` compresses to a latency target (docs/target.md): a speed-up over the best dense engine (2.0), a
    dict of target keys (each replaces the recipe's own `target` key; the rest stay), or a whole TargetConfig.
    Each layer's form is then chosen by measurement on this CPU and replaces the recipe's stages; the run writes
    the chosen per-layer recipe, fine-tunes with it and reports the target against its own measurement.
    """
    raw = (recipe if isinstance(recipe, Recipe) else Recipe.load(recipe, trust_code=trust_code)).to_dict()
    if isinstance(target, TargetConfig):
        raw["target"] = target.model_dump(mode="json")
    elif target is not None:
        raw["target"] = {**(raw.get("target") or {}), **({"speedup": target} if isinstance(target, int | float)
                                                         else target)}
    if target is not None:
        raw["stages"] = []
    bundle: DataBundle | None = None
    if isinstance(data, Dataset | DataLoader):
        bundle = user_data(data, val_data, test_data, classes=classes, arguments=("data", "val_data", "test_data"))
    elif val_data is not None or test_data is not None:
        raise SlimkitError("val_data and test_data go with your own training data: pass a Dataset or DataLoader "
                           f"as data (got {type(data).__name__})")
    elif isinstance(data, str):
        raw["data"] = {**raw["data"], "name": data, "factory": None, "kwargs": {}}
    elif isinstance(data, DataConfig):
        raw["data"] = data.model_dump(mode="json")
    elif isinstance(data, DataBundle):
        bundle = data
    elif data is not None:
        user_data(data, arguments=("data", "val_data", "test_data"))  # raises, naming what `data` was
    resolved = Recipe.from_dict(apply_overrides(raw, overrides), trust_code=True)  # checked above, or yours
    objective = (make_objective(loss_fn, metric, target_key or "labels")
                 if _objective_given(loss_fn, metric, target_key) else None)
    return run_recipe(resolved, Path(out_dir) if out_dir else None, resume=resume, model=model, data=bundle,
                      progress=progress, objective=objective)


def _stages(recipe: Any, trust_code: bool) -> tuple[list[MethodConfig], int | None]:
    """Stage configs (and the recipe's epochs, where it has them) from any form `prepare` takes."""
    if isinstance(recipe, Recipe):
        return list(recipe.stages), recipe.train.epochs
    if isinstance(recipe, str | os.PathLike):
        loaded = Recipe.load(recipe, trust_code=trust_code)
        return list(loaded.stages), loaded.train.epochs
    if isinstance(recipe, MethodConfig | dict):
        return [parse_stage(recipe, ("stages", 0))], None
    if isinstance(recipe, Sequence):
        return [parse_stage(item, ("stages", i)) for i, item in enumerate(recipe)], None
    raise SlimkitError(f"recipe: a {type(recipe).__name__} is not a recipe; pass a Recipe, a bundled recipe name or "
                       f"YAML path, a stage such as {{'prune': {{'method': 'gmp', 'sparsity': 0.9}}}}, or a list of "
                       f"stages")


def prepare(model: nn.Module, recipe: Recipe | str | Path | MethodConfig | dict | Sequence[Any], *,
            steps_per_epoch: int, epochs: int | None = None, data: Iterable[Any] | None = None,
            loss_fn: LossFn | None = None, target_key: str = "labels",
            state: dict[str, Any] | None = None, trust_code: bool = False) -> Compression:
    """Attach a recipe's methods to `model` for a loop of your own; returns the `Compression` to drive it.

    Then: `optimizer = compression.optimizer(torch.optim.SGD, lr=...)` (or `compression.wrap(optimizer)`),
    add `compression.loss(outputs, batch)` to your loss, step the optimizer as usual, and end with
    `model = compression.finalize()`. `data` (your training DataLoader) and `loss_fn` serve the methods
    that score or calibrate on batches. `state` is `compression.state_dict()` from a checkpoint: load it
    here, then the model's own state_dict. With a state nothing is calibrated or scored (the state and the
    model's state_dict hold the results), so a finished model reloads without data. `trust_code` lets a recipe
    file name code (as in `compress`).
    """
    stages, recipe_epochs = _stages(recipe, trust_code)
    epochs = epochs if epochs is not None else recipe_epochs
    if epochs is None:
        raise SlimkitError("prepare needs epochs= (how long your loop trains) for this recipe's schedules")
    issues = window_issues(stages, epochs, where="epochs")
    if issues:
        raise RecipeError(issues)
    check_model_values(model)
    return Compression(model, [build_modifier(s) for s in stages], epochs=epochs, steps_per_epoch=steps_per_epoch,
                       data=data, objective=make_objective(loss_fn, None, target_key), state=state)


def one_shot(model: nn.Module, recipe: Recipe | str | Path | MethodConfig | dict | Sequence[Any],
             data: Iterable[Any], *, loss_fn: LossFn | None = None, target_key: str = "labels",
             trust_code: bool = False) -> nn.Module:
    """Apply a recipe's stages to `model` with no training and return it finished (masks baked in, eval mode).

    For models too large to fine-tune: one-shot pruning (`wanda`, `sparsegpt`, also `magnitude` or `nm`) and
    post-training quantization measure `data`, your calibration batches (a DataLoader or a list of tuple or
    dict batches, read as `prepare` reads them; `target_key` names a dict batch's target, which is not fed to
    the model), and each stage acts once, in the order the recipe lists them. It is `prepare(..., epochs=0)`
    then `finalize()`: a stage that starts at a later epoch is refused; one that trains (gmp, binarization)
    reaches its final form untrained.
    """
    compression = prepare(model, recipe, steps_per_epoch=1, epochs=0, data=data, loss_fn=loss_fn,
                          target_key=target_key, trust_code=trust_code)
    return compression.finalize()
