"""MNIST-format IDX files (Fashion-MNIST, MNIST), plain or gzipped, read with numpy."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from slimkit.data.arrays import RawSplits
from slimkit.errors import DataNotFoundError

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
HOW_TO_GET = {
    "fashion_mnist": "install Debian's package (sudo apt-get install dataset-fashion-mnist), or download the four "
                     "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist into a folder and "
                     "set data.path to it",
    "mnist": "download the four *-ubyte.gz files from https://yann.lecun.com/exdb/mnist/ (or a mirror) into a "
             "folder and set data.path to it",
}


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file: magic (0, 0, dtype 0x08, ndim), big-endian dims, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataNotFoundError(f"{path} cannot be read as {'gzip' if path.suffix == '.gz' else 'a file'}: "
                                f"{exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataNotFoundError(f"{path} is not an unsigned-byte IDX file (bad magic {data[:4]!r})")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataNotFoundError(f"{path} has a bad IDX header: {ndim} dimensions announced, the file ends first")
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4).astype(int)
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataNotFoundError(f"{path} is truncated: expected {int(np.prod(dims))} bytes, found {body.size}")
    return body.reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).exists():
            return folder / name
    return None


def candidate_dirs(name: str, path: Path | None) -> list[Path]:
    """Where to look, in order: data.path, $SLIMKIT_DATA/<name>, then the Debian package's folder."""
    if path is not None:
        return [Path(path)]
    dirs = []
    if os.environ.get("SLIMKIT_DATA"):
        dirs.append(Path(os.environ["SLIMKIT_DATA"]) / name.replace("_", "-"))
    if name == "fashion_mnist":
        dirs.append(Path("/usr/share/datasets/fashion-mnist"))
    return dirs


def locate_idx_files(name: str, path: Path | None) -> dict[str, Path] | None:
    """The four IDX files of the first candidate folder that holds them all, or None."""
    for folder in candidate_dirs(name, path):
        found = {key: file for key, stem in FILES.items() if (file := _find(folder, stem)) is not None}
        if len(found) == len(FILES):
            return found
    return None


def load_idx_dataset(name: str, path: Path | None) -> RawSplits:
    found = locate_idx_files(name, path)
    if found is None:
        looked = candidate_dirs(name, path)
        where = ", ".join(str(d) for d in looked) or "nowhere (no data.path and SLIMKIT_DATA unset)"
        raise DataNotFoundError(
            f"{name} not found: looked for {', '.join(FILES.values())} (optionally .gz) in {where}. "
            f"To get it: {HOW_TO_GET[name]}."
        )
    arrays = {key: torch.from_numpy(read_idx(p).copy()) for key, p in found.items()}
    classes = FASHION_CLASSES if name == "fashion_mnist" else [str(i) for i in range(10)]
    return RawSplits(arrays["train_x"][:, None], arrays["train_y"], arrays["test_x"][:, None], arrays["test_y"],
                     classes, scale=255.0)
