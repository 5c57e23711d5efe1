#!/usr/bin/env python3
"""Check the import graph of src/slimkit: no cycle between rooms, no import up the layers.

A room is the first name under slimkit: slimkit/train/trainer.py and slimkit/train/__init__.py are in
room `train`, slimkit/metrics.py is room `metrics`. Every import between slimkit modules counts, also
those inside functions and under `if TYPE_CHECKING:` (a deferred import is still a dependency):
`import slimkit.x`, `from slimkit.x import y` (the submodule slimkit.x.y where that file exists),
`from slimkit import x`, and relative imports.

It fails (exit 1) on
  * a cycle between rooms,
  * an import of a room in a higher tier of LAYERS than the importing room's, and
  * inside a room of SUBLAYERS, an import between its sub-rooms that does not point down its tiers.
Imports within one room are free unless SUBLAYERS divides it. slimkit/__init__.py, the public face, is above
every tier and may import anything; other modules may take only dunder names (`from slimkit import
__version__`) from it. Every room must be placed in LAYERS, and every sub-room of a divided room in its
SUBLAYERS; names that are not in the tree are ignored.

Usage: python scripts/check_imports.py [path/to/src/slimkit]   (stdlib only)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "slimkit"

# Tiers, bottom first. A room may import rooms of its own tier or below; rooms of one tier must not form a
# cycle. Edit freely: one set per tier.
LAYERS: list[set[str]] = [
    {"errors", "config", "methods", "deprecation", "trust"},                        # 0: vocabulary
    {"layers", "environment", "folding", "files", "formats", "channel_rules", "parametrized", "locks",
     "value_checks"},                                                               # 1: shared helpers
    {"sparsity", "quant", "binary", "distill", "channels", "models", "data", "train",
     "persistence", "capture"},                                                     # 2: methods, training
    {"metrics", "runtime", "report", "hardware", "target"},                         # 3: measure, deploy, report
    {"recipe", "pipeline", "api", "cli", "run_folder", "target_recipe"},            # 4: orchestration
]

# Rooms divided into sub-rooms: the modules and packages right under the room (slimkit/runtime/eager/deploy.py
# is in sub-room `eager` of room `runtime`), in tiers, bottom first. A sub-room imports only itself and
# sub-rooms of lower tiers: two sub-rooms of one tier never import each other. The room's __init__.py is above
# its tiers (it may import any of them; none imports it).
SUBLAYERS: dict[str, list[set[str]]] = {
    # two backends that share only weight layouts, and the benchmark (and an old path) that use both
    "runtime": [{"layouts"}, {"eager", "engine"}, {"bench", "engine_ops"}],
}

ROOT = "<root>"  # the room of slimkit/__init__.py, and the sub-room of a divided room's __init__.py


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def subroom(module: str) -> str:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 else ROOT


class Graph:
    def __init__(self, src: Path):
        self.files = {module_name(p, src): p for p in sorted(src.rglob("*.py"))}
        # (importer, imported module, line)
        self.edges: list[tuple[str, str, int]] = []
        for module, path in self.files.items():
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):  # walk: imports in functions and TYPE_CHECKING blocks count too
                for target in self._targets(module, path, node):
                    self.edges.append((module, target, node.lineno))

    def _existing(self, dotted: str) -> str:
        """The longest prefix of `dotted` that is a module in the tree."""
        parts = dotted.split(".")
        while parts and ".".join(parts) not in self.files:
            parts.pop()
        return ".".join(parts)

    def _targets(self, module: str, path: Path, node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [self._existing(a.name) for a in node.names if a.name.split(".")[0] == PACKAGE]
        if not isinstance(node, ast.ImportFrom):
            return []
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base_parts = package[: len(package) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base.split(".")[0] != PACKAGE:
            return []
        targets = []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.files:  # `from slimkit.pkg import name` where pkg/name.py (or name/) exists
                targets.append(sub)
            elif base == PACKAGE and alias.name.startswith("__"):
                continue  # `from slimkit import __version__`: metadata, not a dependency on the API face
            else:
                targets.append(self._existing(base))
        return targets


def tier_of() -> dict[str, int]:
    tiers: dict[str, int] = {}
    for level, names in enumerate(LAYERS):
        for name in names:
            if name in tiers:
                raise SystemExit(f"check_imports: room {name!r} is in LAYERS twice (tiers {tiers[name]}, {level})")
            tiers[name] = level
    return tiers


def strongly_connected(nodes: set[str], out: dict[str, set[str]]) -> list[list[str]]:
    """Groups of rooms that reach each other (Tarjan, iterative); only groups of two or more."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(nodes):
        if start in index:
            continue
        work = [(start, iter(sorted(out.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(out.get(nxt, ())))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return groups


def shortest_cycle(group: list[str], out: dict[str, set[str]]) -> list[str]:
    """One shortest cycle through the group's first room, for the message."""
    start = group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(out.get(node, ())):
                if nxt == start:
                    return [*paths[node], start]
                if nxt in group and nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    return group


def subroom_problems(graph: Graph, divided: str, layers: list[set[str]]) -> list[str]:
    """What breaks the sub-room tiers of room `divided` (see SUBLAYERS)."""
    tiers = {name: level for level, names in enumerate(layers) for name in names}
    present = {subroom(m) for m in graph.files if room(m) == divided} - {ROOT}
    problems: list[str] = []
    unplaced = sorted(present - tiers.keys())
    if unplaced:
        problems.append(f"sub-rooms of {divided} not placed in SUBLAYERS[{divided!r}] (add each to a tier): "
                        + ", ".join(unplaced))
    wrong: dict[tuple[str, str], list[str]] = {}
    for a, b, line in graph.edges:
        sa, sb = subroom(a), subroom(b)
        if room(a) != divided or room(b) != divided or sa in (sb, ROOT):  # within one, or from the __init__
            continue
        if sb == ROOT or (sa in tiers and sb in tiers and tiers[sb] >= tiers[sa]):
            wrong.setdefault((sa, sb), []).append(f"    {a} -> {b} (line {line})")
    for (sa, sb), lines in sorted(wrong.items()):
        if sb == ROOT:
            problems.append(f"import of the {divided} package (its __init__, above its sub-rooms) from {divided}.{sa}:")
        elif tiers[sb] == tiers[sa]:
            problems.append(f"import between {divided}.{sa} and {divided}.{sb}, sub-rooms of one tier "
                            f"({tiers[sa]}) that never import each other:")
        else:
            problems.append(f"upward import {divided}.{sa} (tier {tiers[sa]}) -> {divided}.{sb} (tier {tiers[sb]}):")
        problems += lines
    return problems


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent / "src" / PACKAGE
    graph = Graph(src)
    tiers = tier_of()
    rooms = {room(m) for m in graph.files} - {ROOT}

    crossing = sorted({(a, b, line) for a, b, line in graph.edges if room(a) != room(b) and room(a) != ROOT})
    out: dict[str, set[str]] = {}
    for a, b, _ in crossing:
        out.setdefault(room(a), set()).add(room(b))
    room_edges = sum(len(v) for v in out.values())

    problems: list[str] = []
    unplaced = sorted(rooms - tiers.keys())
    if unplaced:
        problems.append("rooms not placed in LAYERS (add each to a tier): " + ", ".join(unplaced))

    for group in strongly_connected(rooms, out):
        members = set(group)
        problems.append(f"cycle between rooms {{{', '.join(group)}}}, e.g. {' -> '.join(shortest_cycle(group, out))}:")
        for ra, rb in sorted({(room(a), room(b)) for a, b, _ in crossing}):
            if ra in members and rb in members:
                problems.append(f"  {ra} -> {rb}:")
                problems += [f"    {a} -> {b} (line {line})" for a, b, line in crossing
                             if room(a) == ra and room(b) == rb]

    upward: dict[tuple[str, str], list[str]] = {}
    for a, b, line in crossing:
        ra, rb = room(a), room(b)
        if rb == ROOT or (ra in tiers and rb in tiers and tiers[rb] > tiers[ra]):
            upward.setdefault((ra, rb), []).append(f"    {a} -> {b} (line {line})")
    for (ra, rb), lines in sorted(upward.items()):
        if rb == ROOT:
            problems.append(f"import of the package root (the public API face) from {ra}:")
        else:
            problems.append(f"upward import {ra} (tier {tiers[ra]}) -> {rb} (tier {tiers[rb]}):")
        problems += lines

    for divided, layers in SUBLAYERS.items():
        problems += subroom_problems(graph, divided, layers)

    if problems:
        print("\n".join(problems))
        return 1
    print(f"import graph: {len(graph.files)} modules, {room_edges} edges between rooms, no cycle, no upward import, "
          f"sub-rooms in their tiers ({', '.join(SUBLAYERS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
