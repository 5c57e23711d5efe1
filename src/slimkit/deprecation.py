"""Old public names that still work: a module's `__getattr__` that serves each renamed or moved name with a
DeprecationWarning saying where it lives now.

Anything README.md or docs/ ever showed keeps working after a rename; the warning tells users what to write
instead, and the alias is found only when the old name is asked for (never by `import *` or `__all__`).
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def deprecated_aliases(module: str, renamed: Mapping[str, tuple[str, str]]) -> Callable[[str], Any]:
    """A module `__getattr__` for `module`: `renamed` maps each old name to (the module that holds it now, its
    new name). The new home is imported when the old name is first asked for, so aliases add no import edges
    at load time."""

    def __getattr__(name: str) -> Any:
        if name not in renamed:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        home, new = renamed[name]
        warnings.warn(f"{module}.{name} is deprecated; use {home}.{new}", DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(home), new)

    return __getattr__


def renamed_keyword(old: str, new: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A decorator for a function whose keyword argument `old` is now called `new`: a call that still passes
    `old=` works, with a DeprecationWarning naming `new`; passing both is an error naming the two."""

    def wrap(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def call(*args: P.args, **kwargs: P.kwargs) -> R:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{function.__name__}() got both {old}= (its old name) and {new}=")
                warnings.warn(f"{function.__name__}(): {old}= is deprecated; pass {new}=", DeprecationWarning,
                              stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return call

    return wrap

