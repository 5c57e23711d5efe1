"""The data section of a recipe: a bundled data set read from disk, or the user's own data by import path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from slimkit.config import StrictModel, check_one_source, source_label
from slimkit.data.sources import DATASETS
from slimkit.trust import trust_of


class DataConfig(StrictModel):
    """Which data set to read from disk, how to split it and how to batch it.

    `factory: "pkg.module:build"` instead of `name` calls the user's function with `kwargs`; it returns the
    splits as a mapping {train, val, test} (or a tuple in that order) of torch Datasets or DataLoaders.
    """

    name: str | None = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    path: Path | None = None
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    val_fraction: float = Field(0.1, ge=0, lt=0.5)
    split_seed: int = 0
    augment: Literal["auto", "none", "crop_flip", "crop"] = "auto"
    image_size: int = Field(32, ge=4)
    train_subset: int | None = Field(None, ge=1)
    classes: list[int | str] | None = Field(
        None, description="keep only these classes (ids or names), relabelled 0..n-1 in the order given")
    num_workers: int = Field(0, ge=0, description="loader processes for the train and eval batches (0: in the "
                             "training process)")
    pin_memory: bool | Literal["auto"] = Field("auto", description="page-locked batches for asynchronous copies to "
                                               "a GPU; auto: when training on one")

    @field_validator("name")
    @classmethod
    def _known_data(cls, name: str | None) -> str | None:
        if name is not None and name not in DATASETS:
            raise ValueError(f"unknown data set; allowed: {', '.join(sorted(DATASETS))}")
        return name

    @field_validator("classes")
    @classmethod
    def _class_list(cls, classes: list[int | str] | None) -> list[int | str] | None:
        if classes is None:
            return None
        if len(classes) < 2:
            raise ValueError(f"a classifier needs at least two classes; got {classes}")
        negative = [c for c in classes if isinstance(c, int) and c < 0]
        if negative:
            raise ValueError(f"class ids count from 0; got {negative[0]}")
        repeated = sorted({str(c) for c in classes if classes.count(c) > 1})
        if repeated:
            raise ValueError(f"each class may appear once; {', '.join(repeated)} appears more than once")
        return classes

    @model_validator(mode="after")
    def _one_source(self, info: ValidationInfo) -> DataConfig:
        check_one_source(self.name, self.factory, "bundled data set", DATASETS, "data.factory",
                         trust_of(info.context))
        if self.factory is None and self.kwargs:
            raise ValueError("'kwargs' goes with 'factory'; a bundled data set takes none")
        if self.factory is not None and self.classes is not None:
            raise ValueError("'classes' selects classes of a bundled data set; a factory returns its own data, so "
                             "select the classes there")
        return self

    @property
    def label(self) -> str:
        """The name the report gives the data."""
        return source_label(self.name, self.factory)
