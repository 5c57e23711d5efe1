"""Atomic checkpoint writes and safe reads (weights_only: a checkpoint can never run code)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from slimkit.errors import CheckpointError

CHECKPOINT_FORMAT = "slimkit-checkpoint-v1"  # full training state, written every epoch
WEIGHTS_FORMAT = "slimkit-weights-v1"  # a trainer's best model state
MODEL_FORMAT = "slimkit-model-v1"  # a finished model: weights plus the architecture that rebuilds it


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`.

    A run killed mid-write leaves the previous checkpoint intact, never a half-written one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def safe_load(path: Path, *formats: str) -> dict[str, Any]:
    """Load a slimkit file of one of `formats` with weights_only=True; any failure is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path} is corrupt or is not a slimkit file ({first}). Delete it to start afresh, "
            f"or restore it from a copy."
        ) from None
    if not isinstance(obj, dict) or obj.get("format") not in formats:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a {' or '.join(formats)} file (found format {found!r})")
    return obj
