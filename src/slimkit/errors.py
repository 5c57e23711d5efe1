"""Errors caused by user input. The CLI prints them and exits with code 2; nothing else is caught."""

from __future__ import annotations

from typing import Any


class SlimkitError(Exception):
    """Base class for every error a user can fix by changing their input."""


class RecipeError(SlimkitError):
    """A recipe failed validation; `issues` lists every problem found, each with its key path."""

    def __init__(self, issues: list[str]):
        self.issues = issues
        super().__init__("invalid recipe:\n" + "\n".join(f"  - {issue}" for issue in issues))


class DataNotFoundError(SlimkitError):
    """A data set is not on disk. The message says where we looked and how to get it."""


class CheckpointError(SlimkitError):
    """A checkpoint or saved model is missing, corrupt or of another format."""


class UnsupportedLayerError(SlimkitError):
    """A method was asked to handle a layer type it does not support."""


def first_line(cause: BaseException | str) -> str:
    """The first non-blank line of an exception's message (its type's name when it has none), so a message
    quoting a library's error stays one line."""
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    if lines:
        return lines[0]
    return type(cause).__name__ if isinstance(cause, BaseException) else ""



_MISSING = object()


def _is(value: object, kind: type | tuple[type, ...]) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def _kind_names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("null" if k is type(None) else k.__name__ for k in kinds)


def checked_field(payload: object, key: str | int, kind: type | tuple[type, ...], source: object, *,
                  where: str = "", values: type | tuple[type, ...] | None = None) -> Any:
    """`payload[key]` of a loaded file when it is there and a `kind` (a bool is never a number), and, with
    `values`, every value of that mapping or list a `values`; otherwise a CheckpointError naming the file
    (`source`) and the field by its path (`where` is the path of `payload`). One helper, so that every payload
    kind (model, checkpoint, deployed model, plan, teacher) reports a tampered field the same way."""
    name = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else key
    if isinstance(payload, dict):
        value = payload.get(key, _MISSING)
    elif isinstance(payload, list) and isinstance(key, int) and 0 <= key < len(payload):
        value = payload[key]
    else:
        value = _MISSING
    if value is _MISSING:
        raise CheckpointError(f"{source}: field '{name}' is missing")
    if not _is(value, kind):
        raise CheckpointError(f"{source}: field '{name}' is {type(value).__name__}, not {_kind_names(kind)}")
    if values is not None:
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            if not _is(v, values):
                raise CheckpointError(f"{source}: field '{name}[{k!r}]' is {type(v).__name__}, not "
                                      f"{_kind_names(values)}")
    return value
