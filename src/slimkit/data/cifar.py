"""CIFAR-10 from its official python batches, unpickled with a reader that only builds numpy arrays."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from slimkit.data.arrays import RawSplits
from slimkit.errors import DataNotFoundError

BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
HOW_TO_GET = ("download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz, unpack it, and set data.path "
              "to the cifar-10-batches-py folder")


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """The batches hold dicts of numpy arrays and lists; refuse any other class, so no code can run."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    } | {("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _ArraysOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, KeyError, ValueError, EOFError) as exc:
        raise DataNotFoundError(f"{path} is not a CIFAR-10 python batch ({exc}); {HOW_TO_GET}") from None
    return images, labels


def load_cifar10(path: Path | None) -> RawSplits:
    if path is None:
        raise DataNotFoundError(f"cifar10 needs data.path; {HOW_TO_GET}")
    folder = Path(path)
    missing = [name for name in [*BATCHES, "test_batch"] if not (folder / name).exists()]
    if missing:
        raise DataNotFoundError(f"cifar10: {folder} lacks {', '.join(missing)}; {HOW_TO_GET}")
    train = [_read_batch(folder / name) for name in BATCHES]
    test_x, test_y = _read_batch(folder / "test_batch")
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return RawSplits(torch.from_numpy(train_x), torch.from_numpy(train_y), torch.from_numpy(test_x),
                     torch.from_numpy(test_y), classes, scale=255.0)
