"""Channel rules: how a module moves channels, declared by whoever defines the module.

The channel dependency graph (`channels/graph.py`) knows torch's own layers. A module of the model zoo or of
a user's that zero-pads channels (ResNet's option-A shortcut) registers a `ZeroPadChannels` rule for its class
here; the graph then keeps it as one node whose padded channels are zeros, and channel surgery re-sizes its
padding through the rule. This registry sits below both `models/` and `channels/`, so the zoo declares its
modules' rules without either package importing the other, and a user's module gets the same treatment as
the zoo's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


@dataclass(frozen=True)
class ZeroPadChannels(Generic[M]):
    """The module's output is its input's channels with `left` zero channels before them and `right` after,
    `(left, right) = pads(module)`, and it changes no channel's values (only other dimensions, such as a
    stride). `resize(module, (left, right))` gives it new counts when pruning removes padded channels."""

    pads: Callable[[M], tuple[int, int]]
    resize: Callable[[M, tuple[int, int]], None]


_RULES: dict[type[nn.Module], ZeroPadChannels[Any]] = {}  # each rule takes modules of its key's type


def register_channel_rule(module_type: type[M], rule: ZeroPadChannels[M]) -> None:
    """Declare how `module_type` (and its subclasses) moves channels; registering a type again replaces its
    rule."""
    _RULES[module_type] = rule


def channel_rule(module: nn.Module) -> ZeroPadChannels[Any] | None:
    """The rule registered for the module's class or its nearest registered base class; None for any other
    module."""
    return next((_RULES[cls] for cls in type(module).__mro__ if cls in _RULES), None)
