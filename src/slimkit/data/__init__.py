"""Data: bundled data sets read from local disk, and the user's own Datasets and DataLoaders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import DataLoader, Dataset

from slimkit.config import bundled_name, resolve_factory
from slimkit.data.arrays import (
    ArrayDataset,
    DataBundle,
    RawSplits,
    batch_collate,
    collate_batch,
    make_loader,
    select_classes,
    split_bundle,
)
from slimkit.data.config import DataConfig
from slimkit.data.idx import locate_idx_files
from slimkit.data.sources import DATASETS
from slimkit.errors import SlimkitError

SPLITS = ("train", "val", "test")


def _check_split(value: Any, argument: str) -> Dataset | DataLoader | None:
    """A user's split as given, or an error naming the argument and what it accepts."""
    if value is None or isinstance(value, Dataset | DataLoader):
        return value
    kind = f"{type(value).__module__}.{type(value).__qualname__}"
    hint = (" (wrap arrays as torch.utils.data.TensorDataset(torch.as_tensor(x), torch.as_tensor(y)))"
            if "numpy" in kind or isinstance(value, Sequence) else "")
    raise SlimkitError(f"{argument}: a {kind} is not data slimkit reads; pass a torch Dataset or DataLoader"
                       f"{hint}, a bundled data-set name ({', '.join(sorted(DATASETS))}) or a DataConfig")


def user_data(train: Any, val: Any = None, test: Any = None, *, name: str = "user data",
              classes: Sequence[str] | None = None, arguments: Sequence[str] = SPLITS) -> DataBundle:
    """A DataBundle of the user's own splits (torch Datasets are batched by slimkit, DataLoaders are used
    as given). Anything else is an error naming the argument."""
    first, val_split, test_split = (_check_split(value, argument)
                                    for value, argument in zip((train, val, test), arguments, strict=True))
    if first is None:
        raise SlimkitError(f"{arguments[0]}: training data is required")
    return DataBundle(name, first, val_split, test_split, classes=list(classes) if classes else None)


def load_data(config: DataConfig) -> DataBundle:
    """Read the configured data set and split it deterministically (by data.split_seed), or call the
    user's data factory."""
    if config.factory is not None:
        made = resolve_factory(config.factory, "data.factory")(**config.kwargs)
        if isinstance(made, DataBundle):
            return made
        if isinstance(made, Mapping):
            unknown = sorted(set(made) - set(SPLITS))
            if unknown:
                raise SlimkitError(f"data.factory {config.factory!r} returned keys {unknown}; allowed: {SPLITS}")
            made = tuple(made.get(split) for split in SPLITS)
        if not isinstance(made, tuple) or not 1 <= len(made) <= 3:
            raise SlimkitError(f"data.factory {config.factory!r} must return {{'train': ..., 'val': ..., 'test': ...}}"
                               f" or a tuple (train, val, test); it returned {type(made).__name__}")
        made = (*made, None, None)[:3]
        return user_data(*made, name=config.factory,
                         arguments=[f"data.factory {config.factory!r} -> {s}" for s in SPLITS])
    name = bundled_name(config.name, config.factory, "data set")
    raw = DATASETS[name](config.path, config.image_size)
    if config.classes is not None:
        raw = select_classes(raw, config.classes, name)
    return split_bundle(name, raw, val_fraction=config.val_fraction, split_seed=config.split_seed,
                        augment=config.augment, train_subset=config.train_subset)


def fashion_mnist_available() -> bool:
    return locate_idx_files("fashion_mnist", None) is not None


__all__ = ["DATASETS", "SPLITS", "ArrayDataset", "DataBundle", "DataConfig", "RawSplits", "batch_collate",
           "collate_batch", "fashion_mnist_available", "load_data", "make_loader", "user_data"]
