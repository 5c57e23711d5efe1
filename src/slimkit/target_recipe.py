"""The recipe a latency target chooses: the run's recipe with the per-layer stages slimkit.target picked on the
trained dense model, measured in the engines at the target's batch size and threads.

The choice is written beside the run before anything fine-tunes: `target.json` (the tables, sensitivities,
prediction and chosen forms) and `target-recipe.yaml`, an ordinary recipe with those stages that
`slimkit run target-recipe.yaml` reruns without choosing again. A resumed run reads its choice back from
target.json instead of timing again. A target the solver cannot reach stops the run with the fastest point it
found (target.json holds it); it is never relaxed.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from torch import nn

from slimkit.data import DataBundle
from slimkit.errors import SlimkitError
from slimkit.files import atomic_write_text
from slimkit.methods import parse_stage
from slimkit.recipe import Recipe
from slimkit.train import distributed
from slimkit.train.objective import Objective

TARGET_FILE = "target.json"
CHOSEN_RECIPE = "target-recipe.yaml"


class TargetUnreachableError(SlimkitError):
    """The target's speed-up is beyond every point the solver found; `section` is the choice's record, with the
    fastest point found and its prediction."""

    def __init__(self, message: str, section: dict[str, Any]):
        super().__init__(message)
        self.section = section


def _read_choice(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SlimkitError(f"{path}: the target's choice cannot be read ({exc}); delete it to choose again") from None
    if not isinstance(record, dict) or not isinstance(record.get("stages"), list) or \
            not isinstance(record.get("section"), dict):
        raise SlimkitError(f"{path}: not a target choice (stages and section); delete it to choose again")
    return record


def chosen_recipe(recipe: Recipe, stages: list[dict[str, Any]]) -> Recipe:
    """`recipe` without its target, with `stages`, measured in the engines at the target's batch and threads."""
    target = recipe.target
    if target is None:
        raise SlimkitError("chosen_recipe needs a recipe with a target")
    measure = recipe.measure.model_copy(update={"engines": True, "batch_sizes": [target.batch],
                                                "threads": target.threads})
    return recipe.model_copy(update={"target": None, "measure": measure,
                                     "stages": [parse_stage(s, ("stages", i)) for i, s in enumerate(stages)]})


def targeted_recipe(recipe: Recipe, dense: nn.Module, data: DataBundle, objective: Objective,
                    input_shape: list[int], out_dir: Path | None, resume: bool) -> tuple[Recipe, dict[str, Any]]:
    """(the recipe to fine-tune with, the choice's record) for `recipe`'s target on the trained `dense` model
    (on the CPU), or the choice a resumed run made."""
    from slimkit.target.choose import choose

    target = recipe.target
    if target is None:
        raise SlimkitError("targeted_recipe needs a recipe with a target")
    if distributed.current().enabled:
        raise SlimkitError("a latency target times layers on this CPU, which several processes would share: run it "
                           "in one process (not under torchrun)")
    saved = out_dir / TARGET_FILE if out_dir is not None else None
    if resume and saved is not None and saved.exists():
        record = _read_choice(saved)
    else:
        batches = list(itertools.islice(data.train_batches(recipe.data.batch_size), target.calibration_batches))
        choice = choose(dense, batches, objective, target, input_shape, epochs=recipe.train.epochs)
        record = {"stages": choice.stages, "section": choice.section}
        if saved is not None:
            atomic_write_text(saved, json.dumps(record, indent=1))
    section = record["section"]
    if not section["reached"]:
        where = f" ({saved} holds it)" if saved is not None else ""
        raise TargetUnreachableError(
            f"target.speedup {target.speedup:g}x over {section['baseline']} cannot be reached with the forms measured "
            f"here: the fastest point found is predicted at {section['predicted_ms']:.3f} ms, "
            f"{section['predicted_speedup']:.2f}x{where}. Lower the target or allow more forms (target.widths, "
            f"sparsities, binary)", section)
    chosen = chosen_recipe(recipe, record["stages"])
    if out_dir is not None:
        atomic_write_text(out_dir / CHOSEN_RECIPE, chosen.to_yaml())
    return chosen, section
