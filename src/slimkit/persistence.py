"""Saving and loading models as a state_dict plus the zoo architecture that rebuilds them; no pickled code."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from slimkit.errors import CheckpointError
from slimkit.models import build_model
from slimkit.recipe import MethodConfig, ModelConfig, build_modifier, parse_stage
from slimkit.train.checkpoint import CHECKPOINT_FORMAT, MODEL_FORMAT, WEIGHTS_FORMAT, atomic_save, safe_load


def save_model(model: nn.Module, path: Path, config: ModelConfig, in_channels: int, num_classes: int,
               input_size: int, stages: Sequence[MethodConfig] = ()) -> None:
    """Write the weights, the resolved architecture and the stages whose structure `load` must re-create."""
    arch = config.model_copy(update={"in_channels": in_channels, "num_classes": num_classes,
                                     "input_size": input_size, "checkpoint": None})
    atomic_save({"format": MODEL_FORMAT, "arch": arch.model_dump(mode="json"),
                 "stages": [{s.kind: s.model_dump(mode="json")} for s in stages],
                 "state_dict": model.state_dict()}, Path(path))


def load(path: str | Path) -> nn.Module:
    """Rebuild a model saved by `save_model` (or a run's model.pt), in eval mode."""
    saved = safe_load(Path(path), MODEL_FORMAT)
    arch = ModelConfig.model_validate(saved["arch"])
    model = build_model(arch, arch.in_channels, arch.num_classes, arch.input_size)
    for i, stage in enumerate(saved.get("stages", [])):
        model = build_modifier(parse_stage(stage, ("stages", i))).rebuild_structure(model)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the saved architecture {arch.name}: {exc}") from None
    return model.eval()


def load_weights(model: nn.Module, path: Path) -> None:
    """Initialise `model` from a slimkit model file or a trainer's best.pt/checkpoint.pt."""
    saved = safe_load(Path(path), MODEL_FORMAT, WEIGHTS_FORMAT, CHECKPOINT_FORMAT)
    state = saved["state_dict"] if saved["format"] == MODEL_FORMAT else saved["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit this model: {exc}") from None
