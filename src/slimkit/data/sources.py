"""The bundled data sets by name: each reads its files from local disk, nothing touches the network."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from slimkit.data.arrays import RawSplits
from slimkit.data.cifar import load_cifar10
from slimkit.data.digits import load_digits_dataset
from slimkit.data.folder import load_image_folder
from slimkit.data.idx import load_idx_dataset

# name -> reader(path, image_size); `path` is data.path (None: the default locations)
DATASETS: dict[str, Callable[[Path | None, int], RawSplits]] = {
    "fashion_mnist": lambda path, size: load_idx_dataset("fashion_mnist", path),
    "mnist": lambda path, size: load_idx_dataset("mnist", path),
    "digits": lambda path, size: load_digits_dataset(),
    "cifar10": lambda path, size: load_cifar10(path),
    "image_folder": lambda path, size: load_image_folder(path, size),
}

__all__ = ["DATASETS"]
