"""The public entry point: compress a model with a recipe and get back the model, metrics and report."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from slimkit.data import DataBundle
from slimkit.pipeline import Run, run_recipe
from slimkit.recipe import DataConfig, Recipe, apply_overrides


def compress(model: nn.Module, data: str | DataConfig | DataBundle | None = None,
             recipe: str | Path | Recipe = "gmp-90", *, out_dir: str | Path | None = None, resume: bool = False,
             overrides: tuple[str, ...] = (), progress: bool = True) -> Run:
    """Train and compress `model` as `recipe` says, on `data` (a data-set name, a DataConfig or loaded data).

    `recipe` is a Recipe, a YAML path or a bundled recipe name (`slimkit recipes` lists them). The recipe's
    own model section is ignored: `model` is what gets compressed. `overrides` are 'key.path=value' strings.
    """
    raw = (recipe if isinstance(recipe, Recipe) else Recipe.load(recipe)).to_dict()
    if isinstance(data, str):
        raw["data"]["name"] = data
    elif isinstance(data, DataConfig):
        raw["data"] = data.model_dump(mode="json")
    resolved = Recipe.from_dict(apply_overrides(raw, overrides))
    return run_recipe(resolved, Path(out_dir) if out_dir else None, resume=resume, model=model,
                      data=data if isinstance(data, DataBundle) else None, progress=progress)
