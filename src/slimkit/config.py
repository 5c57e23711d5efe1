"""Validated configuration models and a formatter that turns pydantic errors into key-path messages."""

from __future__ import annotations

import difflib
import functools
import math
import sys
import traceback
import types
import typing
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from slimkit.errors import SlimkitError, first_line
from slimkit.trust import CodeTrust, may_import


def _numbers_only(annotation: object) -> bool:
    """Whether a field takes numbers but not booleans (bool is an int to Python, never to a recipe)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) is not None or isinstance(
        annotation, types.UnionType) else (annotation,)
    return bool({int, float} & set(args)) and bool not in args


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, assignments are validated too, and a boolean is
    never read as a number (`sparsity: false` is an error, not 0.0)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_as_numbers(cls, data: object) -> object:
        if isinstance(data, dict):
            for key, value in data.items():
                field = cls.model_fields.get(key) if isinstance(key, str) else None
                if isinstance(value, bool) and field is not None and _numbers_only(field.annotation):
                    raise ValueError(f"'{key}': {value!r} is a boolean, and '{key}' takes a number")
        return data


def format_path(loc: Iterable[str | int]) -> str:
    """('stages', 0, 'prune', 'sparsity') -> 'stages[0].prune.sparsity'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<recipe>"


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The config class that sits at `loc` inside `model`, following list and optional annotations."""
    current: type[BaseModel] | None = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = current.model_fields.get(part)
        if field is None:
            return None
        current = _first_model(field.annotation)
    return current


def _first_model(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is not None:
        for arg in typing.get_args(annotation):
            found = _first_model(arg)
            if found is not None:
                return found
    return None


def describe_errors(exc: ValidationError, model: type[BaseModel], prefix: tuple = ()) -> list[str]:
    """One line per problem: the key path, the offending value and what is allowed."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = format_path(prefix + loc)
        value = err.get("input")
        if err["type"] == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            allowed = sorted(owner.model_fields) if owner else []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            lines.append(
                f"'{path}': unknown key (value {value!r})"
                + (f"; did you mean '{hint[0]}'?" if hint else "")
                + (f" Allowed keys: {', '.join(allowed)}" if allowed else "")
            )
        elif err["type"] == "missing":
            lines.append(f"'{path}': required key is missing")
        elif not loc and err["type"] == "value_error":  # a check across keys names its own keys: no value dump
            lines.append(str(err["ctx"]["error"]) if "ctx" in err else err["msg"].removeprefix("Value error, "))
        elif _is_nan(value):  # pydantic's "should be less than 1" says nothing about NaN
            lines.append(f"'{path}': invalid value {value!r}: NaN is not a number; "
                         f"{err['msg'].replace('Input should', 'it must')}")
        else:
            lines.append(f"'{path}': invalid value {value!r}: {err['msg']}")
    return lines


def _is_nan(value: object) -> bool:
    """A float NaN, or a string pydantic reads as one ('nan' from an override, '.nan' in YAML)."""
    try:
        return isinstance(value, float | str) and math.isnan(float(value))
    except ValueError:
        return False


def check_one_source(name: str | None, factory: str | None, what: str, allowed: Iterable[str], key: str,
                     trust: CodeTrust) -> None:
    """A section names a bundled `what` or a user factory, exactly one; a factory must be an import path that
    `trust` lets slimkit import, and then it must import (see check_import_path)."""
    if (name is None) == (factory is None):
        raise ValueError(f"give exactly one of 'name' (a {what}: {', '.join(sorted(allowed))}) and 'factory' "
                         f"(an import path 'pkg.module:function')")
    if factory is not None:
        check_import_path(factory, key, trust)


def _split_import_path(path: str, key: str) -> tuple[str, str]:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{key}: {path!r} is not an import path of the form 'package.module:function'")
    return module_name, attr


def check_import_path(path: str, key: str, trust: CodeTrust) -> None:
    """Validate the import path at recipe key `key`: its form always; that it resolves to a callable only when
    `trust` lets slimkit import its module (slimkit.trust), since importing runs the module's code."""
    module_name, _ = _split_import_path(path, key)
    if may_import(module_name, path, key, trust):
        resolve_factory(path, key)


def bundled_name(name: str | None, factory: str | None, what: str) -> str:
    """`name` of a section that check_one_source passed and that has no factory: the bundled `what` it names."""
    if name is None:
        raise SlimkitError(f"this section names a {what} factory ({factory!r}), not a bundled {what}")
    return name


def source_label(name: str | None, factory: str | None) -> str:
    """What a section that check_one_source passed names: its bundled name, or its factory's import path."""
    label = name if name is not None else factory
    if label is None:
        raise SlimkitError("a section names a bundled source or a factory; this one names neither")
    return label


def resolve_factory(path: str, key: str) -> typing.Callable[..., typing.Any]:
    """The callable a 'package.module:function' import path names; a clear error at `key` otherwise.

    Import paths let a recipe (and so the CLI) build a user's own model or data: the user names code of
    their own, which is imported like any module, never unpickled from a file. A recipe read from a file is
    validated under slimkit.trust first, so this runs only on paths the user trusts.
    """
    import importlib

    module_name, attr = _split_import_path(path, key)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{key}: cannot import module {module_name!r} ({exc})") from None
    target: typing.Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise ValueError(f"{key}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{key}: {path!r} is not callable")
    return _reporting(target, path, key)


def _reporting(target: typing.Callable[..., typing.Any], path: str, key: str) -> typing.Callable[..., typing.Any]:
    """`target`, except that an exception it raises becomes a SlimkitError naming the recipe key, the import
    path, the exception's type and message and the line that raised it, the last one in the callable's own
    module where there is one (the original stays chained for a debugger): a user's factory or loss that
    fails is the user's error to fix, not a slimkit traceback."""
    source = getattr(sys.modules.get(getattr(target, "__module__", None) or ""), "__file__", None)

    @functools.wraps(target)
    def call(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        try:
            return target(*args, **kwargs)
        except SlimkitError:
            raise
        except Exception as exc:
            frames = traceback.extract_tb(exc.__traceback__)[1:]  # below this wrapper
            own = [f for f in frames if f.filename == source]
            line = own[-1] if own else frames[-1] if frames else None
            where = f" (at {line.filename}:{line.lineno})" if line is not None else ""
            raise SlimkitError(f"{key} {path!r} raised {type(exc).__name__}: {first_line(exc)}{where}") from exc

    return call
