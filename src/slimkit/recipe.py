"""The recipe: one validated document composing the model, data, objective, training, stages and
measurement sections. Each section's config lives beside the code it configures; methods register in
`slimkit.methods`, so a new method adds one module and the recipe format never changes.

A recipe is validated completely before any training starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from slimkit import binary, channels, distill, quant, sparsity  # noqa: F401  (their methods register on import)
from slimkit.config import StrictModel, describe_errors
from slimkit.data.config import DataConfig
from slimkit.errors import RecipeError
from slimkit.methods import (
    STAGE_KINDS,
    MethodConfig,
    build_modifier,
    method_configs,
    methods,
    parse_stage,
    window_issues,
)
from slimkit.metrics import MeasureConfig
from slimkit.models.config import ModelConfig
from slimkit.target.config import TargetConfig
from slimkit.train.config import ObjectiveConfig, TrainConfig
from slimkit.trust import CodeTrust, context_for, validation_context

__all__ = ["STAGE_KINDS", "DataConfig", "MeasureConfig", "MethodConfig", "ModelConfig", "ObjectiveConfig", "Recipe",
           "TargetConfig", "TrainConfig", "apply_overrides", "build_modifier", "bundled_recipes", "method_configs",
           "methods", "parse_stage"]

RECIPE_DIR = Path(__file__).parent / "recipes"
Section = TypeVar("Section", bound=BaseModel)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML keeps the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise RecipeError([f"line {line}: key {key!r} is given twice in one mapping (first on line "
                               f"{seen[key]}); give each key once"])
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


class Recipe(StrictModel):
    """A whole job: model, data, an optional dense baseline, the compression run and its stages."""

    name: str = "run"
    seed: int = 0
    model: ModelConfig | None = None
    data: DataConfig
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    baseline: TrainConfig | None = None
    train: TrainConfig
    stages: list[SerializeAsAny[MethodConfig]] = Field(default_factory=list)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    target: TargetConfig | None = None  # a latency target: slimkit chooses the stages (slimkit.target)

    @field_validator("stages", mode="before")
    @classmethod
    def _parse_stages(cls, stages: Any) -> Any:
        if not isinstance(stages, list):
            return stages
        return [parse_stage(item, ("stages", i)) for i, item in enumerate(stages)]

    @model_validator(mode="after")
    def _stages_fit_training(self) -> Recipe:
        issues = window_issues(self.stages, self.train.epochs)
        if issues:
            raise ValueError(issues[0])
        if self.target is not None and self.stages:
            raise ValueError("a recipe with a 'target' gets its stages from the target (each layer's form, chosen by "
                             "measurement); remove 'stages', or remove 'target' to give the stages yourself")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, trust_code: bool = False) -> Recipe:
        """Validate a plain mapping (from YAML, say), reporting every problem at once. Import paths it names
        are imported only with `trust_code=True` or when their package is allow-listed (slimkit.trust)."""
        return cls._validated(data, context_for(trust_code))

    @classmethod
    def _validated(cls, data: dict[str, Any], context: dict[str, CodeTrust]) -> Recipe:
        if not isinstance(data, dict):
            raise RecipeError([f"a recipe is a mapping of keys, not {type(data).__name__}"])
        raw = dict(data)
        raw_stages = raw.pop("stages", None) or []
        issues: list[str] = []
        try:
            cls.model_validate(raw, context=context)
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
            return cls.model_validate({**raw, "stages": stages}, context=context)
        except ValidationError as exc:
            raise RecipeError(describe_errors(exc, cls)) from None

    @classmethod
    def load(cls, source: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = (), *,
             trust_code: bool = False) -> Recipe:
        """Read a recipe from a YAML path or a bundled recipe name, then apply key=value overrides. Import
        paths are imported only with `trust_code=True` or when their package is allow-listed (slimkit.trust)."""
        return cls.from_dict(apply_overrides(_read_yaml(source), overrides), trust_code=trust_code)

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
        data = self.model_dump(mode="json", exclude={"stages", "target"})
        data["stages"] = [{s.kind: s.model_dump(mode="json")} for s in self.stages]
        if self.target is not None:  # written only when set: recipes without one read as before
            data["target"] = self.target.model_dump(mode="json")
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _read_yaml(source: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping of a recipe file or bundled recipe name, unvalidated."""
    path = Path(source)
    if not path.exists():
        bundled = RECIPE_DIR / f"{source}.yaml"
        if not bundled.exists():
            raise RecipeError([f"no recipe file {str(source)!r}, and no bundled recipe of that name; "
                               f"bundled: {', '.join(bundled_recipes())}"])
        path = bundled
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise RecipeError([f"{path}: not valid YAML: {exc}"]) from None
    return data or {}


def normalized_yaml(text: str) -> str | None:
    """A saved recipe (a checkpoint's copy) as this version writes it, with options added since given their
    defaults; None if it no longer validates. Its import paths are checked for form and never imported: the
    text is compared, nothing is built from it."""
    try:
        return Recipe._validated(yaml.safe_load(text), validation_context(CodeTrust.NONE)).to_yaml()
    except (RecipeError, yaml.YAMLError):
        return None


def read_section(source: Path, key: str, config: type[Section], *, trust_code: bool = False) -> Section | None:
    """Section `key` of a saved recipe (a run folder's recipe.yaml), validated alone, under the user's trust;
    None when the recipe has no such section. What `slimkit info` and `export` need of a run, without
    validating (and so importing) the sections they do not use."""
    data = _read_yaml(source)
    if not isinstance(data, dict):
        raise RecipeError([f"{source}: a recipe is a mapping of keys, not {type(data).__name__}"])
    if data.get(key) is None:
        return None
    try:
        return config.model_validate(data[key], context=context_for(trust_code))
    except ValidationError as exc:
        raise RecipeError([f"{source}: {issue}" for issue in describe_errors(exc, config, (key,))]) from None


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
