"""Data sets read from local disk; nothing here touches the network."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from slimkit.data.arrays import ArrayDataset, DataBundle, RawSplits, collate_batch, split_bundle
from slimkit.data.cifar import load_cifar10
from slimkit.data.digits import load_digits_dataset
from slimkit.data.folder import load_image_folder
from slimkit.data.idx import load_idx_dataset, locate_idx_files

if TYPE_CHECKING:
    from slimkit.recipe import DataConfig

DATASETS: dict[str, Callable[[DataConfig], RawSplits]] = {
    "fashion_mnist": lambda cfg: load_idx_dataset("fashion_mnist", cfg.path),
    "mnist": lambda cfg: load_idx_dataset("mnist", cfg.path),
    "digits": lambda cfg: load_digits_dataset(),
    "cifar10": lambda cfg: load_cifar10(cfg.path),
    "image_folder": lambda cfg: load_image_folder(cfg.path, cfg.image_size),
}


def load_data(config: DataConfig) -> DataBundle:
    """Read the configured data set and split it deterministically (by data.split_seed)."""
    raw = DATASETS[config.name](config)
    return split_bundle(config.name, raw, val_fraction=config.val_fraction, split_seed=config.split_seed,
                        augment=config.augment, train_subset=config.train_subset)


def fashion_mnist_available() -> bool:
    return locate_idx_files("fashion_mnist", None) is not None


__all__ = ["DATASETS", "ArrayDataset", "DataBundle", "collate_batch", "fashion_mnist_available", "load_data"]
