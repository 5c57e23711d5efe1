"""Which layers a method touches: by type and by name pattern, leaving out the first conv and last linear."""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import Field
from torch import nn

from slimkit.config import StrictModel
from slimkit.errors import UnsupportedLayerError

LAYER_TYPES: dict[str, type[nn.Module]] = {"conv": nn.Conv2d, "linear": nn.Linear}


class LayerSelection(StrictModel):
    """Layers are chosen by type, then narrowed by fnmatch patterns on their module names."""

    types: list[Literal["conv", "linear"]] = Field(default_factory=lambda: ["conv", "linear"])
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    skip_first_conv: bool = True
    skip_last_linear: bool = True


def select_layers(model: nn.Module, selection: LayerSelection) -> dict[str, nn.Module]:
    """Name -> module for every layer the selection picks, in model order.

    A name pattern that matches only layers of unsupported types is an error naming them, and so is a
    selection that picks nothing: a method silently doing nothing is the worst outcome.
    """
    wanted = tuple(LAYER_TYPES[t] for t in selection.types)
    named = [(n, m) for n, m in model.named_modules() if n and "parametrizations" not in n.split(".")]
    convs = [n for n, m in named if isinstance(m, nn.Conv2d)]
    linears = [n for n, m in named if isinstance(m, nn.Linear)]
    skipped = set()
    if selection.skip_first_conv and convs:
        skipped.add(convs[0])
    if selection.skip_last_linear and linears:
        skipped.add(linears[-1])

    def matches(name: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    for pattern in selection.include:
        hits = [(n, m) for n, m in named if fnmatch.fnmatchcase(n, pattern)]
        unsupported = [f"{n} ({type(m).__name__})" for n, m in hits if not isinstance(m, wanted)]
        if hits and len(unsupported) == len(hits):
            raise UnsupportedLayerError(
                f"layers.include pattern {pattern!r} matches only unsupported layers: {', '.join(unsupported[:5])}. "
                f"Supported types: {', '.join(selection.types)} ({', '.join(c.__name__ for c in wanted)})"
            )
    chosen = {
        n: m for n, m in named
        if isinstance(m, wanted) and n not in skipped
        and (not selection.include or matches(n, selection.include))
        and not matches(n, selection.exclude)
    }
    if not chosen:
        candidates = [n for n, m in named if isinstance(m, wanted)]
        raise UnsupportedLayerError(
            f"the layer selection {selection.model_dump()} picks no layer of this model; "
            f"layers of the selected types: {', '.join(candidates) or 'none'}"
        )
    return chosen
