"""Errors caused by user input. The CLI prints them and exits with code 2; nothing else is caught."""

from __future__ import annotations


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
