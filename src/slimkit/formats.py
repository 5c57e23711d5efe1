"""slimkit's file formats: the format tags of checkpoints, weights and model files, their atomic writes and
their safe, schema-checked reads (weights_only: a file can never run code).

This module sits in a low tier (it needs only `errors` and `files`), so training, persistence and the runtime
read and write the same formats without importing each other.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from slimkit.errors import CheckpointError, checked_field, first_line
from slimkit.files import atomic_write

CHECKPOINT_FORMAT = "slimkit-checkpoint-v1"  # full training state, written every epoch
WEIGHTS_FORMAT = "slimkit-weights-v1"  # a trainer's best model state
MODEL_FORMAT = "slimkit-model-v1"  # a finished model: weights plus the architecture that rebuilds it


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through `files.atomic_write`: a run killed mid-write leaves the previous checkpoint intact,
    never a half-written one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _cause(exc: BaseException) -> str:
    """The cause in one line; of torch's weights-only refusal only the unpickler's finding (its advice to turn
    the protection off is never passed on)."""
    marker = "WeightsUnpickler error:"
    return first_line(str(exc).split(marker, 1)[1]) if marker in str(exc) else first_line(exc)


def safe_load(path: Path, *formats: str) -> dict[str, Any]:
    """Load a slimkit file of one of `formats` with weights_only=True; any failure is a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on a bad file; every one is a CheckpointError
        if isinstance(exc, pickle.UnpicklingError) and "unsupported global" in str(exc).lower():
            raise CheckpointError(
                f"{path} was refused: it holds code or objects other than tensors and plain data, and slimkit "
                f"loads files with weights_only=True only, so that a file can never run code. Use a file slimkit "
                f"wrote, or one you saved as a plain state_dict") from None
        raise CheckpointError(f"{path} is corrupt or is not a slimkit file ({_cause(exc)}). Delete it to "
                              f"start afresh, or restore it from a copy.") from None
    if not isinstance(obj, dict) or obj.get("format") not in formats:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} is not a {' or '.join(formats)} file (found format {found!r})")
    return obj


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A trainer's checkpoint.pt after weights_only loading and a schema check: every field present and of its
    kind, tensors (and only tensors) in the model states, the recipe text a string where present (checkpoints
    from before it was kept lack it). A mismatch is a CheckpointError naming the file and the field."""
    state = safe_load(path, CHECKPOINT_FORMAT)
    if checked_field(state, "epoch", int, path) < 0:
        raise CheckpointError(f"{path}: field 'epoch' is {state['epoch']}, not an epoch number")
    checked_field(state, "train_config", dict, path)
    checked_field(state, "model", dict, path, values=torch.Tensor)
    optimizer = checked_field(state, "optimizer", dict, path)
    checked_field(optimizer, "state", dict, path, where="optimizer", values=dict)
    checked_field(optimizer, "param_groups", list, path, where="optimizer", values=dict)
    checked_field(state, "modifiers", list, path, values=dict)
    checked_field(state, "history", list, path, values=dict)
    if checked_field(state, "best", (dict, type(None)), path) is not None:
        checked_field(state["best"], "epoch", int, path, where="best")
        checked_field(state["best"], "score", (int, float), path, where="best")
        checked_field(state["best"], "model", dict, path, where="best", values=torch.Tensor)
    if "recipe" in state:
        checked_field(state, "recipe", str, path)
    return state
