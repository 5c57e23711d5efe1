"""Recipe-matched controls: the configurations that tell a claim's method apart from what its recipe changes
besides the method.

A claim compares two configurations, each under its own paper's recipe, so a gap may come from a recipe field
(label smoothing, batch size, the model's activations) rather than from the method. A `Control` is a
configuration declared as data in its suite: the recipe of configuration `of`, resolved as the suite resolves it,
with the named `fields` set, each to a value or to what another configuration's resolved recipe has there
(`Like`). Each claim lists the recipe-matched comparisons it must survive (`Claim.controls`); a comparison is
judged by the same rule as the claim (verdicts.verdict), and the claim *survives its controls* when every one of
them reaches the claim's own verdict. Rows record the fields their control set, so a page states what differs
from the JSON alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from verdicts import CONTRADICTED, NOT_MEASURED, REPRODUCED, Claim, Stats, verdict

RESOLVED = (REPRODUCED, CONTRADICTED)


@dataclass(frozen=True)
class Like:
    """A control value: whatever configuration `group`'s resolved recipe has at the same field."""

    group: str


@dataclass(frozen=True)
class Control:
    """Configuration `group`: configuration `of` with each dotted recipe path of `fields` set to its value
    (a `Like` copies another configuration's); `why` names the confound it removes."""

    group: str
    of: str
    fields: Mapping[str, Any]
    why: str
    label: str = field(default="", compare=False)  # the recipe name's stem (defaults to the group, slugged)

    @property
    def slug(self) -> str:
        return self.label or self.group.replace(" ", "-").replace("%", "").replace("=", "")


def _child(node: Any, key: str) -> Any:
    """node[key] for a mapping, node[int(key)] for a list (a stage by its index); KeyError where absent."""
    if isinstance(node, Mapping) and key in node:
        return node[key]
    if isinstance(node, list) and key.isdigit() and int(key) < len(node):
        return node[int(key)]
    raise KeyError(key)


def get_field(recipe: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path of a recipe mapping, list items by index ('stages.0.binarize.init_theta');
    a KeyError names the path where it is absent."""
    node: Any = recipe
    for key in path.split("."):
        try:
            node = _child(node, key)
        except KeyError:
            raise KeyError(f"recipe has no '{path}' ('{key}' missing)") from None
    return node


def set_field(recipe: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path of a recipe mapping; every section above it must exist (a typo is an error, never a
    new section)."""
    *parents, last = path.split(".")
    node: Any = recipe
    for key in parents:
        try:
            node = _child(node, key)
        except KeyError:
            raise KeyError(f"recipe has no section '{key}' for '{path}'") from None
    if not isinstance(node, dict):
        raise KeyError(f"recipe's '{'.'.join(parents)}' is not a section, for '{path}'")
    node[last] = copy.deepcopy(value)


def apply_control(control: Control, recipe_of: Callable[[str], dict[str, Any]]) -> tuple[dict[str, Any],
                                                                                         dict[str, Any]]:
    """(the control's recipe, the fields it set with their resolved values): `recipe_of(group)` is the suite's
    resolved recipe mapping of a configuration (same seed and budget)."""
    recipe = copy.deepcopy(recipe_of(control.of))
    resolved = {path: get_field(recipe_of(v.group), path) if isinstance(v, Like) else v
                for path, v in control.fields.items()}
    for path, value in resolved.items():
        get_field(recipe, path)  # the field must exist in the configuration it controls
        set_field(recipe, path, value)
    return recipe, resolved


def control_record(control: Control, resolved: Mapping[str, Any]) -> dict[str, Any]:
    """What a row of a control stores: the configuration it changes, the fields with their values and why."""
    return {"of": control.of, "fields": dict(resolved), "why": control.why,
            "like": {p: v.group for p, v in control.fields.items() if isinstance(v, Like)}}


def control_claims(claim: Claim) -> list[Claim]:
    """The claim's recipe-matched comparisons as claims of their own, judged by the same rule."""
    return [Claim(f"{better} > {worse}", better, worse, claim.source) for better, worse in claim.controls]


def survival(claim: Claim, stats: Mapping[str, Stats]) -> str:
    """Whether a resolved claim keeps its verdict under every recipe-matched comparison it lists."""
    if not claim.controls:
        return "- (none declared)"
    own = verdict(claim, stats).status
    if own not in RESOLVED:
        return "-"
    judged = [(c, verdict(c, stats).status) for c in control_claims(claim)]
    missing = [c.text for c, status in judged if status == NOT_MEASURED]
    if missing:
        return f"control not run ({'; '.join(missing)})"
    differ = [f"{c.text}: {status}" for c, status in judged if status != own]
    return "**survives**" if not differ else f"**does not survive** ({'; '.join(differ)})"


def controls_table(claims: Sequence[Claim], stats: Mapping[str, Stats],
                   records: Mapping[str, Mapping[str, Any]]) -> str:
    """Markdown: per claim and recipe-matched comparison, what the control changes, both sides' accuracy,
    the gap with its interval and the comparison's verdict, then whether the claim survives."""
    lines = ["| paper claim (our verdict) | recipe-matched comparison | what the control changes | ours: better | "
             "ours: worse | gap (pts) | interval | verdict | claim survives its controls |",
             "|---|---|---|---:|---:|---:|---|---|---|"]
    for claim in claims:
        if not claim.controls:
            continue
        own = verdict(claim, stats).status
        for i, c in enumerate(control_claims(claim)):
            v = verdict(c, stats)
            changes = "; ".join(describe(g, records) for g in (c.better, c.worse) if g in records) or "-"
            sides = [stats[g].text() if g in stats else "-" for g in (c.better, c.worse)]
            gap = "-" if v.gap is None else f"{v.gap:+.2f}"
            interval = "-" if v.interval is None else f"{v.interval[0]:+.2f} to {v.interval[1]:+.2f} ({v.method})"
            status = f"**{v.status}**" + (f" ({v.reason})" if v.reason else "")
            last = survival(claim, stats) if i == 0 else "(as above)"
            lines.append(f"| {claim.text} ({own}) | {c.text} | {changes} | {sides[0]} | {sides[1]} | {gap} "
                         f"| {interval} | {status} | {last} |")
    return "\n".join(lines)


def describe(group: str, records: Mapping[str, Mapping[str, Any]]) -> str:
    """One control as a table cell: `group`: field = value (configuration X's), from its row's record; a
    section copied whole is named, not spelled out (the JSON has it)."""
    r = records[group]
    like = r.get("like", {})
    parts = [f"{path} = " + (f"{like[path]}'s" if path in like and isinstance(value, Mapping) else repr(value)
                             + (f" ({like[path]}'s)" if path in like else ""))
             for path, value in r["fields"].items()]
    return f"`{group}`: {', '.join(parts)}"


def declared_list(controls: Sequence[Control]) -> str:
    """The declared controls as a Markdown list, for a page written before (or without) any run."""
    def value(v: Any) -> str:
        return f"{v.group}'s" if isinstance(v, Like) else repr(v)

    return "\n".join(f"- `{c.group}`: `{c.of}` with {', '.join(f'{k} = {value(v)}' for k, v in c.fields.items())}: "
                     f"{c.why}" for c in controls)


def records_of(rows: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Group -> its control record, from the rows of a results file (the first row of each control group)."""
    found: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        if r.get("control") and r["group"] not in found:
            found[r["group"]] = r["control"]
    return found
