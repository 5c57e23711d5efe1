"""Image folders with one sub-folder per class, optionally already split into train/ and test/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from slimkit.data.arrays import RawSplits
from slimkit.errors import DataNotFoundError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _read_split(root: Path, classes: list[str], size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS) if folder.is_dir() else []
        for file in files:
            with Image.open(file) as img:
                arr = np.asarray(img.convert(mode).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
            images.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataNotFoundError(f"image folder {root} holds no images ({', '.join(sorted(EXTENSIONS))}) "
                                f"in its class sub-folders")
    return torch.from_numpy(np.stack(images)), torch.tensor(labels)


def load_image_folder(path: Path | None, size: int) -> RawSplits:
    if path is None or not Path(path).is_dir():
        raise DataNotFoundError(
            f"image_folder: {path} is not a folder. Set data.path to a folder with one sub-folder per class "
            f"(root/cat/*.png, root/dog/*.png), or with train/ and test/ folders laid out that way."
        )
    root = Path(path)
    split = (root / "train").is_dir() and (root / "test").is_dir()
    class_root = root / "train" if split else root
    classes = [d.name for d in _class_dirs(class_root)]
    if len(classes) < 2:
        raise DataNotFoundError(f"image_folder: {class_root} needs at least two class sub-folders, found {classes}")
    first = next(p for d in _class_dirs(class_root) for p in sorted(d.iterdir()) if p.suffix.lower() in EXTENSIONS)
    with Image.open(first) as img:
        mode = "L" if img.mode in ("L", "1", "I;16") else "RGB"
    train_x, train_y = _read_split(class_root, classes, size, mode)
    test_x, test_y = _read_split(root / "test", classes, size, mode) if split else (None, None)
    return RawSplits(train_x, train_y, test_x, test_y, classes, scale=255.0)
