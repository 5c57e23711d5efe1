"""Names the sparsity structure a weight tensor has, for `slimkit info` and reports."""

from __future__ import annotations

import torch
from torch import Tensor


def detect_structure(weight: Tensor) -> str:
    """'dense' when no entry is zero, else 'unstructured'."""
    return "dense" if bool(torch.all(weight != 0)) else "unstructured"
