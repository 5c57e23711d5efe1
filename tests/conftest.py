from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

# Two xdist workers share two cores: one thread each keeps them from fighting.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Kernel tests call numba kernels directly, and numba's OpenMP launch sets the OpenMP thread count of
    the libgomp torch shares (not MKL's): a later training run then mixed thread counts and a resumed run
    differed in the 4th decimal. Deployed modules restore it themselves
    (runtime.eager.kernel_modules.kernel_threads)."""
    yield
    torch.set_num_threads(1)

DIGITS_RECIPE: dict[str, Any] = {
    "name": "digits-test",
    "seed": 0,
    "model": {"name": "lenet", "width": 0.5},
    "data": {"name": "digits", "batch_size": 64},
    "baseline": {"epochs": 3, "lr": 0.05, "schedule": "cosine"},
    "train": {"epochs": 4, "lr": 0.02, "schedule": "cosine"},
    "stages": [{"prune": {"method": "gmp", "sparsity": 0.8, "scope": "global", "start_epoch": 0, "end_epoch": 2}}],
    "measure": {"batch_sizes": [1, 8], "repeats": 3, "warmup": 1},
}

SHORT_RECIPE: dict[str, Any] = copy.deepcopy(DIGITS_RECIPE)  # every write point of a run within a few seconds
SHORT_RECIPE["baseline"]["epochs"], SHORT_RECIPE["train"]["epochs"] = 1, 2
SHORT_RECIPE["stages"] = [{"prune": {"method": "gmp", "sparsity": 0.8, "scope": "global", "start_epoch": 0,
                                      "end_epoch": 1}}]


@pytest.fixture
def digits_recipe() -> dict[str, Any]:
    """A recipe that trains a small LeNet on the bundled digits in about a second."""
    return copy.deepcopy(DIGITS_RECIPE)
