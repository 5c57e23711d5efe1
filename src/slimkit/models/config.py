"""The model section of a recipe: a zoo model by name, or the user's own model by import path."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationInfo, field_validator, model_validator

from slimkit.config import StrictModel, bundled_name, check_one_source, source_label
from slimkit.models.zoo import MODELS
from slimkit.trust import trust_of

ZOO_ONLY = ("in_channels", "num_classes", "input_size", "options")


class ModelConfig(StrictModel):
    """Which model to build. A zoo model's input channels, size and class count default to the data's.

    `factory: "pkg.module:build"` instead of `name` builds the user's own model as `build(**kwargs)`.
    """

    name: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    width: float = Field(1.0, gt=0, le=16)
    in_channels: int | None = Field(None, ge=1, le=4096)
    num_classes: int | None = Field(None, ge=2, le=100_000)
    input_size: int | None = Field(None, ge=4, le=4096)
    options: dict[str, Any] = Field(default_factory=dict)
    checkpoint: Path | None = None

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str | None) -> str | None:
        if name is not None and name not in MODELS:
            raise ValueError(f"unknown model; allowed: {', '.join(sorted(MODELS))}")
        return name

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> ModelConfig:
        check_one_source(self.name, self.factory, "zoo model", MODELS, "model.factory", trust_of(info.context))
        if self.factory is not None:
            zoo_keys = [k for k in (*ZOO_ONLY, "width") if getattr(self, k) != type(self).model_fields[k].get_default(
                call_default_factory=True)]
            if zoo_keys:
                raise ValueError(f"{', '.join(zoo_keys)} configure zoo models; a factory model takes its "
                                 f"arguments in 'kwargs'")
            return self
        if self.kwargs:
            raise ValueError("'kwargs' goes with 'factory'; a zoo model takes 'options'")
        params = inspect.signature(MODELS[bundled_name(self.name, self.factory, "model")]).parameters
        fixed = {"in_channels", "num_classes", "input_size", "width"}
        allowed = sorted(p for p in params if p not in fixed)
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ValueError(
                f"model '{self.name}' has no option {', '.join(unknown)}; allowed options: "
                f"{', '.join(allowed) or 'none'}"
            )
        return self

    @property
    def label(self) -> str:
        """The name the report gives the model."""
        return source_label(self.name, self.factory)
