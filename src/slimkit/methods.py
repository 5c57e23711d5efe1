"""The method registry: every compression method's config class and the modifier it builds.

This module sits at the bottom of the package (it needs only `config` and `errors`), so method packages
register themselves here and the recipe layer reads the registry without either importing the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import Field, ValidationError, model_validator

from slimkit.config import StrictModel, describe_errors, format_path
from slimkit.errors import RecipeError

STAGE_KINDS = ("prune", "channels", "binarize", "quantize", "distill")


class MethodConfig(StrictModel):
    """Base of every compression method's config. `kind` is the stage key, `method` its name."""

    kind: ClassVar[str] = ""
    method: str
    start_epoch: int = Field(0, ge=0)
    end_epoch: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered_window(self) -> MethodConfig:
        if self.end_epoch is not None and self.end_epoch < self.start_epoch:
            raise ValueError(f"end_epoch ({self.end_epoch}) is before start_epoch ({self.start_epoch})")
        return self


class BuildsModifier(Protocol):
    """What a registered modifier class is: called with its config, it returns the modifier."""

    def __call__(self, config: Any, /) -> Any: ...


@dataclass(frozen=True)
class MethodSpec:
    config: type[MethodConfig]
    modifier: BuildsModifier


_METHODS: dict[str, dict[str, MethodSpec]] = {kind: {} for kind in STAGE_KINDS}

M = TypeVar("M", bound=BuildsModifier)


def register_method(*configs: type[MethodConfig]) -> Callable[[M], M]:
    """Class decorator: `@register_method(GradualMagnitudeConfig)` makes the config's method usable in recipes,
    built by the decorated modifier class. A name registered twice is an error, never a silent overwrite."""

    def register(modifier: M) -> M:
        for config in configs:
            if config.kind not in _METHODS:
                raise ValueError(f"{config.__name__}.kind must be one of {STAGE_KINDS}, not {config.kind!r}")
            name = config.model_fields["method"].default
            if not isinstance(name, str) or not name:
                raise ValueError(f"{config.__name__}.method needs a Literal default naming the method")
            existing = _METHODS[config.kind].get(name)
            if existing is not None:
                raise ValueError(f"{config.kind} method {name!r} is already registered by "
                                 f"{existing.config.__name__}; choose another name")
            _METHODS[config.kind][name] = MethodSpec(config, modifier)
        return modifier

    return register


def methods(kind: str) -> list[str]:
    """The registered method names for a stage kind."""
    return sorted(_METHODS[kind])


def method_configs(kind: str) -> dict[str, type[MethodConfig]]:
    """Registered method name -> its config class, for a stage kind."""
    return {name: spec.config for name, spec in sorted(_METHODS[kind].items())}


def build_modifier(config: MethodConfig) -> Any:
    """The modifier for one validated stage config."""
    return _METHODS[config.kind][config.method].modifier(config)


def parse_stage(item: Any, loc: tuple = ()) -> MethodConfig:
    """{'prune': {'method': 'gmp', ...}} -> the registered config, with errors named by key path."""
    if isinstance(item, MethodConfig):
        return item
    where = format_path(loc)
    if not isinstance(item, dict) or len(item) != 1:
        raise RecipeError([f"'{where}': a stage is one mapping {{kind: {{method: ...}}}}; got {item!r}. "
                           f"Allowed kinds: {', '.join(STAGE_KINDS)}"])
    (kind, body), = item.items()
    if kind not in _METHODS:
        raise RecipeError([f"'{where}': unknown stage kind {kind!r}; allowed: {', '.join(STAGE_KINDS)}"])
    if not isinstance(body, dict) or "method" not in body:
        raise RecipeError([f"'{format_path((*loc, kind, 'method'))}': required key is missing; "
                           f"allowed methods: {', '.join(methods(kind)) or 'none yet'}"])
    spec = _METHODS[kind].get(body["method"])
    if spec is None:
        raise RecipeError([f"'{format_path((*loc, kind, 'method'))}': unknown method {body['method']!r}; "
                           f"allowed: {', '.join(methods(kind)) or 'none yet'}"])
    try:
        return spec.config.model_validate(body)
    except ValidationError as exc:
        raise RecipeError(describe_errors(exc, spec.config, (*loc, kind))) from None


def window_issues(stages: list[MethodConfig], epochs: int, where: str = "train.epochs") -> list[str]:
    """Stage windows that reach beyond the run's epochs (named `where`), by key path."""
    issues = []
    for i, stage in enumerate(stages):
        for key in ("start_epoch", "end_epoch"):
            value = getattr(stage, key)
            if value is not None and value > epochs:
                issues.append(f"'stages[{i}].{stage.kind}.{key}': {value} is beyond {where} ({epochs})")
    return issues
