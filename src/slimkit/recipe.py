"""The recipe: typed, validated configs for model, data, training and the compression stages.

A recipe is validated completely before any training starts. Methods register their config class and
modifier here, so a new method adds one module and a recipe, and the recipe format never changes.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import yaml
from pydantic import Field, SerializeAsAny, ValidationError, field_validator, model_validator

from slimkit.config import StrictModel, describe_errors, format_path
from slimkit.errors import RecipeError

if TYPE_CHECKING:
    from slimkit.train.modifier import Modifier

RECIPE_DIR = Path(__file__).parent / "recipes"
STAGE_KINDS = ("prune", "channels", "binarize", "quantize", "distill")


class ModelConfig(StrictModel):
    """Which zoo model to build. Input channels, size and class count default to the data set's."""

    name: str
    width: float = Field(1.0, gt=0, le=16)
    in_channels: int | None = Field(None, ge=1)
    num_classes: int | None = Field(None, ge=2)
    input_size: int | None = Field(None, ge=4)
    options: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = None

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from slimkit.models import MODELS

        if name not in MODELS:
            raise ValueError(f"unknown model; allowed: {', '.join(sorted(MODELS))}")
        return name

    @model_validator(mode="after")
    def _known_options(self) -> ModelConfig:
        from slimkit.models import MODELS

        params = inspect.signature(MODELS[self.name]).parameters
        fixed = {"in_channels", "num_classes", "input_size", "width"}
        allowed = sorted(p for p in params if p not in fixed)
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ValueError(
                f"model '{self.name}' has no option {', '.join(unknown)}; allowed options: "
                f"{', '.join(allowed) or 'none'}"
            )
        return self


class DataConfig(StrictModel):
    """Which data set to read from disk, how to split it and how to batch it."""

    name: str
    path: Path | None = None
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    val_fraction: float = Field(0.1, ge=0, lt=0.5)
    split_seed: int = 0
    augment: Literal["auto", "none", "crop_flip", "crop"] = "auto"
    image_size: int = Field(32, ge=4)
    train_subset: int | None = Field(None, ge=1)
    num_workers: int = Field(0, ge=0)

    @field_validator("name")
    @classmethod
    def _known_data(cls, name: str) -> str:
        from slimkit.data import DATASETS

        if name not in DATASETS:
            raise ValueError(f"unknown data set; allowed: {', '.join(sorted(DATASETS))}")
        return name


class TrainConfig(StrictModel):
    """Optimiser, learning-rate schedule and length of one training phase."""

    epochs: int = Field(10, ge=0)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5e-4, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _milestones_in_range(self) -> TrainConfig:
        bad = [m for m in self.milestones if not 0 < m <= self.epochs]
        if bad:
            raise ValueError(f"milestones {bad} must lie in 1..epochs ({self.epochs})")
        return self


class MeasureConfig(StrictModel):
    """How latency is measured: batch sizes, a fixed thread count, warm-up and repeats (median)."""

    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64])
    threads: int | None = Field(None, ge=1)
    warmup: int = Field(3, ge=0)
    repeats: int = Field(21, ge=1)


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


@dataclass(frozen=True)
class MethodSpec:
    config: type[MethodConfig]
    modifier: Callable[[Any], Modifier]


_METHODS: dict[str, dict[str, MethodSpec]] = {kind: {} for kind in STAGE_KINDS}


def register_method(config: type[MethodConfig], modifier: Callable[[Any], Modifier]) -> None:
    """Make `config`'s method usable in recipes; `modifier(config)` builds its modifier."""
    if config.kind not in _METHODS:
        raise ValueError(f"{config.__name__}.kind must be one of {STAGE_KINDS}, not {config.kind!r}")
    name = config.model_fields["method"].default
    _METHODS[config.kind][name] = MethodSpec(config, modifier)


def methods(kind: str) -> list[str]:
    """The registered method names for a stage kind."""
    return sorted(_METHODS[kind])


def method_configs(kind: str) -> dict[str, type[MethodConfig]]:
    """Registered method name -> its config class, for a stage kind."""
    return {name: spec.config for name, spec in sorted(_METHODS[kind].items())}


def build_modifier(config: MethodConfig) -> Modifier:
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


class Recipe(StrictModel):
    """A whole job: model, data, an optional dense baseline, the compression run and its stages."""

    name: str = "run"
    seed: int = 0
    model: ModelConfig | None = None
    data: DataConfig
    baseline: TrainConfig | None = None
    train: TrainConfig
    stages: list[SerializeAsAny[MethodConfig]] = Field(default_factory=list)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)

    @field_validator("stages", mode="before")
    @classmethod
    def _parse_stages(cls, stages: Any) -> Any:
        if not isinstance(stages, list):
            return stages
        return [parse_stage(item, ("stages", i)) for i, item in enumerate(stages)]

    @model_validator(mode="after")
    def _stages_fit_training(self) -> Recipe:
        for i, stage in enumerate(self.stages):
            for key in ("start_epoch", "end_epoch"):
                value = getattr(stage, key)
                if value is not None and value > self.train.epochs:
                    raise ValueError(f"'stages[{i}].{stage.kind}.{key}': {value} is beyond "
                                     f"train.epochs ({self.train.epochs})")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Validate a plain mapping (from YAML, say), reporting every problem at once."""
        if not isinstance(data, dict):
            raise RecipeError([f"a recipe is a mapping of keys, not {type(data).__name__}"])
        raw = dict(data)
        raw_stages = raw.pop("stages", None) or []
        issues: list[str] = []
        try:
            cls.model_validate(raw)
        except ValidationError as exc:
            issues += describe_errors(exc, cls)
        stages = []
        if not isinstance(raw_stages, list):
            issues.append(f"'stages': must be a list of stages, not {raw_stages!r}")
            raw_stages = []
        for i, item in enumerate(raw_stages):
            try:
                stages.append(parse_stage(item, ("stages", i)))
            except RecipeError as exc:
                issues += exc.issues
        if issues:
            raise RecipeError(issues)
        try:
            return cls.model_validate({**raw, "stages": stages})
        except ValidationError as exc:
            raise RecipeError(describe_errors(exc, cls)) from None

    @classmethod
    def load(cls, source: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
        """Read a recipe from a YAML path or a bundled recipe name, then apply key=value overrides."""
        path = Path(source)
        if not path.exists():
            bundled = RECIPE_DIR / f"{source}.yaml"
            if not bundled.exists():
                raise RecipeError([f"no recipe file {str(source)!r}, and no bundled recipe of that name; "
                                   f"bundled: {', '.join(bundled_recipes())}"])
            path = bundled
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise RecipeError([f"{path}: not valid YAML: {exc}"]) from None
        return cls.from_dict(apply_overrides(data or {}, overrides))

    def missing_files(self) -> list[str]:
        """Files the recipe names (a model checkpoint, a teacher) that do not exist, by key path; checked
        before any training so a typo does not cost a baseline's worth of time."""
        named: list[tuple[str, Path | None]] = [("model.checkpoint", self.model.checkpoint if self.model else None)]
        for i, stage in enumerate(self.stages):
            for key, value in stage:
                if isinstance(value, Path):
                    named.append((f"stages[{i}].{stage.kind}.{key}", value))
        return [f"'{where}': {path} does not exist" for where, path in named if path is not None and not path.exists()]

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude={"stages"})
        data["stages"] = [{s.kind: s.model_dump(mode="json")} for s in self.stages]
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def bundled_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply 'train.epochs=3' or 'stages.0.prune.sparsity=0.8' to a raw recipe mapping."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RecipeError([f"override {item!r} is not of the form key.path=value"])
        value = yaml.safe_load(text)
        node: Any = data
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError([f"override {item!r}: '{where}' is not an index of a {len(node)}-item list"])
                node = node[int(part)]
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict | list):
                    raise RecipeError([f"override {item!r}: '{where}' holds a value, not a mapping"])
        last = parts[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise RecipeError([f"override {item!r}: '{key}' is not an index of the list"])
            node[int(last)] = value
        else:
            node[last] = value
    return data
