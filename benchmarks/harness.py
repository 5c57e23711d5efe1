"""Shared benchmark helpers.

- The allocator settings every latency measurement runs under (see slimkit.environment.ensure_allocator_env).
- Paper claims and their verdicts: verdicts.py.
- Results files written atomically (slimkit.files), rows merged so that a partial run replaces only its rows.
- Running one recipe for a benchmark row, each recipe in a run folder of its own that a rerun resumes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slimkit.environment import ALLOCATOR_ENV, ensure_allocator_env


def merge_rows(earlier: Sequence[dict[str, Any]], new: Sequence[dict[str, Any]],
               key: Callable[[dict[str, Any]], Any] = lambda r: (r["group"], r["seed"])) -> list[dict[str, Any]]:
    """The earlier rows with every row of the same key replaced by this run's, earlier order first."""
    fresh = {key(r): r for r in new}
    kept = [r for r in earlier if key(r) not in fresh]
    return kept + list(fresh.values())


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(path: Path, payload: Any) -> None:
    from slimkit.files import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    from slimkit.files import atomic_write_text

    atomic_write_text(path, text)


def recipe_digest(recipe: dict[str, Any]) -> str:
    """A short digest of a recipe mapping: identical recipes share one run folder."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_recipe_dict(recipe: dict[str, Any], out: Path, callbacks: Sequence[Callable] = ()) -> dict[str, Any]:
    """Run a recipe mapping in `out` (resumed when a previous run left a checkpoint there); returns the run's
    metrics."""
    import slimkit
    from slimkit.recipe import Recipe

    result = slimkit.run_recipe(Recipe.from_dict(recipe), out, resume=out.exists(), progress=False,
                                callbacks=tuple(callbacks))
    return result.metrics


def epoch_seconds(history: list[dict[str, Any]]) -> float:
    """Median seconds per epoch of a training history (0 for none)."""
    seconds = sorted(r["seconds"] for r in history)
    return seconds[len(seconds) // 2] if seconds else 0.0


def set_epochs(recipe: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Set train.epochs and move what the recipe counts in epochs in proportion, so that its schedule keeps
    its shape in a run of another length: train.warmup_epochs (a float, 4 decimals), train.milestones and every
    stage's start_epoch/end_epoch (rounded; an end stays at least one epoch after its start where it was).
    Returns what moved, {key path: [old, new]}, for the results to record."""
    train = recipe["train"]
    old = train["epochs"]
    train["epochs"] = epochs
    moved: dict[str, Any] = {}
    if old == epochs:
        return moved

    def scale(value: float) -> float:
        return value * epochs / old

    if train.get("warmup_epochs"):
        new = round(scale(train["warmup_epochs"]), 4)
        moved["train.warmup_epochs"], train["warmup_epochs"] = [train["warmup_epochs"], new], new
    if train.get("milestones"):
        new = sorted({min(max(round(scale(m)), 1), epochs) for m in train["milestones"]})
        moved["train.milestones"], train["milestones"] = [train["milestones"], new], new
    for i, stage in enumerate(recipe.get("stages", [])):
        ((kind, body),) = stage.items()
        start, end = body.get("start_epoch"), body.get("end_epoch")
        new_start = None if start is None else min(round(scale(start)), epochs - 1)
        new_end = None if end is None else min(max(round(scale(end)), (new_start or 0) + (end > (start or 0))),
                                                epochs)
        for key, was, new in (("start_epoch", start, new_start), ("end_epoch", end, new_end)):
            if was is not None and was != new:
                body[key] = new
                moved[f"stages.{i}.{kind}.{key}"] = [was, new]
    return moved


def training_budget(recipe: dict[str, Any]) -> dict[str, Any]:
    """What every row of a comparison shares: the architecture and width, the data selection and the epochs.
    (Model options, batch size and optimizer are each method's recipe's own.)"""
    data = recipe["data"]
    return {"model": {k: recipe["model"].get(k) for k in ("name", "width")}, "epochs": recipe["train"]["epochs"],
            "data": {k: data.get(k) for k in ("name", "classes", "train_subset", "split_seed", "val_fraction")}}


QUICK_ROOT = Path(__file__).parent / "runs" / "quick"


def quick_dirs(suite: str) -> tuple[Path, Path]:
    """(runs, results) of a suite's --quick check: under benchmarks/runs/quick, never the committed results,
    since a run of another budget would replace the committed rows."""
    return QUICK_ROOT / suite, QUICK_ROOT / "results"


def run_seconds(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Run folder -> its recorded training seconds, from result rows (a run two labels share counts once)."""
    return {r["run"]: r["train_seconds"] for r in rows if r.get("train_seconds") is not None}


def trained_seconds(metrics: dict[str, Any]) -> float:
    """The training seconds a run recorded, over its phases (a loaded checkpoint's dense phase trains 0 s)."""
    return sum(m.get("train_seconds") or 0.0 for m in metrics["models"].values())


def wall_time_line(seconds: dict[str, float], env: dict[str, Any]) -> str:
    """The suite's wall time as a page states it: the sum of its runs' recorded training seconds (run -> seconds),
    on the machine's CPU count, and the whole invocation's where it was recorded (env['wall_seconds'])."""
    if not seconds:
        return "Wall time: not recorded for these rows (run before the suites recorded it)."
    line = (f"Run time on {env.get('cpu_count', '?')} CPU cores: {_duration(sum(seconds.values()))} of training "
            f"summed over {len(seconds)} runs (each run's recorded training seconds, validation included; test "
            "evaluation, measurement and timing passes come on top, and runs in parallel processes overlap)")
    if env.get("wall_seconds") is not None:
        line += f"; the last invocation took {_duration(env['wall_seconds'])} from start to end"
    return line + "."


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"


__all__ = ["ALLOCATOR_ENV", "QUICK_ROOT", "ensure_allocator_env", "epoch_seconds", "merge_rows", "quick_dirs",
           "read_json", "recipe_digest", "run_recipe_dict", "run_seconds", "set_epochs", "trained_seconds",
           "training_budget", "wall_time_line",
           "write_json", "write_text"]


def machine_facts() -> dict[str, Any]:
    """What decides a timing on this machine: the CPU model and SIMD flags, the kernel builds slimkit's operators
    can run here, and the precision OpenVINO's CPU plugin computes in when nothing pins it."""
    from slimkit.environment import cpu_info
    from slimkit.runtime.engine.build import runnable_builds
    from slimkit.runtime.engine.dense_engines import shared_core

    precision = str(shared_core().get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name())
    return {"kernel_builds": runnable_builds(), "precision": precision} | cpu_info()


def machine_line(env: dict[str, Any]) -> str:
    """machine_facts as the sentence every timing page opens with."""
    isa = ", ".join(env.get("isa", [])) or "no AVX2"
    return (f"CPU: **{env.get('cpu_model')}** ({isa}); kernel builds it runs: {', '.join(env['kernel_builds'])} (each "
            f"operator's kernel chosen by timing on it); OpenVINO's default precision here: **{env['precision']}** "
            f"(slimkit's artifacts pin f32; a baseline run at another precision is named by it)")

