"""Shared benchmark helpers.

- The allocator settings every latency measurement runs under (see slimkit.environment.ensure_allocator_env).
- Paper claims and their verdicts: a claim says one configuration beats another; a benchmark publishes its
  claims as data before it runs, and its page states for each whether our measurement reproduced it.
- Results files written atomically (slimkit.files), rows merged so that a partial run replaces only its rows.
- Running one recipe for a benchmark row, each recipe in a run folder of its own that a rerun resumes.

The verdict rule, in one place (`verdict`): over the seeds of each configuration, take the mean test accuracy
and the range (max - min). The gap is mean(claimed better) - mean(claimed worse); the seed spread is the larger
of the two ranges. The gap is resolved only when |gap| > 2 x spread and both sides have at least 2 seeds: then
the claim is *reproduced* (gap > 0) or *contradicted* (gap < 0); otherwise it is *not resolved*.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slimkit.environment import ALLOCATOR_ENV, ensure_allocator_env

MIN_SEEDS = 2
REPRODUCED, CONTRADICTED, NOT_RESOLVED, NOT_MEASURED = "reproduced", "contradicted", "not resolved", "not measured"
SPREAD_RULE = ("A gap counts as resolved only when it exceeds twice the seed spread: for each configuration we "
               "take the mean test accuracy over its seeds and its range (max - min over seeds); the gap is "
               "mean(claimed better) - mean(claimed worse), the seed spread is the larger of the two ranges, "
               f"and both sides need at least {MIN_SEEDS} seeds. |gap| > 2 x spread: *reproduced* when the gap "
               "has the claimed sign, *contradicted* when it has the other; otherwise *not resolved*.")


@dataclass(frozen=True)
class Claim:
    """A published ordering: configuration `better` reaches a higher accuracy than `worse` (group keys of
    the benchmark's rows), as `source` states; `note` says where our setting departs from the paper's."""

    text: str
    better: str
    worse: str
    source: str
    note: str = ""


@dataclass(frozen=True)
class Stats:
    """Test accuracy of one configuration over its seeds, in percentage points."""

    mean: float
    low: float
    high: float
    seeds: tuple[int, ...]

    @property
    def range(self) -> float:
        return self.high - self.low

    def text(self) -> str:
        if len(self.seeds) == 1:
            return f"{self.mean:.2f} (1 seed)"
        return f"{self.mean:.2f} ({self.low:.2f}-{self.high:.2f}, {len(self.seeds)} seeds)"


@dataclass(frozen=True)
class Verdict:
    status: str
    gap: float | None = None
    spread: float | None = None
    reason: str = ""


def group_stats(rows: Iterable[dict[str, Any]], value: Callable[[dict[str, Any]], float] = lambda r: 100 * r["test_acc"]
                ) -> dict[str, Stats]:
    """Group key -> Stats over the rows' seeds (each row has 'group' and 'seed')."""
    groups: dict[str, dict[int, float]] = {}
    for r in rows:
        groups.setdefault(r["group"], {})[r["seed"]] = value(r)
    return {g: Stats(statistics.fmean(v.values()), min(v.values()), max(v.values()), tuple(sorted(v)))
            for g, v in groups.items()}


def verdict(claim: Claim, stats: dict[str, Stats]) -> Verdict:
    """The claim against our measurement, by the rule of SPREAD_RULE."""
    missing = [g for g in (claim.better, claim.worse) if g not in stats]
    if missing:
        return Verdict(NOT_MEASURED, reason=f"no rows for {', '.join(missing)}")
    better, worse = stats[claim.better], stats[claim.worse]
    gap, spread = better.mean - worse.mean, max(better.range, worse.range)
    few = min(len(better.seeds), len(worse.seeds))
    if few < MIN_SEEDS:
        return Verdict(NOT_RESOLVED, gap, spread, f"{few} seed(s); the rule needs {MIN_SEEDS}")
    if abs(gap) > 2 * spread:
        return Verdict(REPRODUCED if gap > 0 else CONTRADICTED, gap, spread)
    return Verdict(NOT_RESOLVED, gap, spread, "gap within twice the seed spread")


def claims_table(claims: Sequence[Claim], stats: dict[str, Stats]) -> str:
    """Markdown: paper claim -> our measurement -> verdict, one line per claim."""
    lines = ["| paper claim | source | ours: claimed better | ours: claimed worse | gap (pts) | 2 x seed spread "
             "| verdict |", "|---|---|---:|---:|---:|---:|---|"]
    for c in claims:
        v = verdict(c, stats)
        side = [stats[g].text() if g in stats else "-" for g in (c.better, c.worse)]
        gap = "-" if v.gap is None else f"{v.gap:+.2f}"
        spread = "-" if v.spread is None else f"{2 * v.spread:.2f}"
        status = f"**{v.status}**" + (f" ({v.reason})" if v.reason else "")
        source = c.source + (f". {c.note}" if c.note else "")
        lines.append(f"| {c.text} | {source} | {side[0]} | {side[1]} | {gap} | {spread} | {status} |")
    return "\n".join(lines)


def expected_orderings(claims: Sequence[Claim]) -> str:
    """The claims as a Markdown list, for a page written before (or without) any measurement."""
    return "\n".join(f"- {c.text} ({c.source}{'; ' + c.note if c.note else ''})" for c in claims)


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


__all__ = ["ALLOCATOR_ENV", "CONTRADICTED", "MIN_SEEDS", "NOT_MEASURED", "NOT_RESOLVED", "REPRODUCED", "SPREAD_RULE",
           "Claim", "Stats", "Verdict", "claims_table", "ensure_allocator_env", "epoch_seconds", "expected_orderings",
           "group_stats", "merge_rows", "read_json", "recipe_digest", "run_recipe_dict", "set_epochs",
           "training_budget", "verdict", "write_json", "write_text"]
