"""scikit-learn's bundled 8x8 digits: 1,797 images that ship with the package, for fast runs and tests."""

from __future__ import annotations

import torch

from slimkit.data.arrays import RawSplits


def load_digits_dataset() -> RawSplits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).to(torch.uint8)[:, None]
    labels = torch.from_numpy(digits.target)
    return RawSplits(images, labels, None, None, [str(i) for i in range(10)], scale=16.0)
