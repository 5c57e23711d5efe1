"""Saving and loading models as a state_dict plus the zoo architecture that rebuilds them; no pickled code."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from pydantic import ValidationError
from torch import nn

from slimkit.channels.plan import ChannelPlan, apply_plan
from slimkit.config import describe_errors
from slimkit.errors import CheckpointError, RecipeError, SlimkitError, checked_field, first_line
from slimkit.files import atomic_write_text
from slimkit.formats import CHECKPOINT_FORMAT, MODEL_FORMAT, WEIGHTS_FORMAT, atomic_save, safe_load
from slimkit.methods import MethodConfig, build_modifier, parse_stage
from slimkit.models import ModelConfig, build_model
from slimkit.models.size import size_issue
from slimkit.trust import CodeTrust, validation_context


class SavedStage(Protocol):
    """What a model file keeps of a modifier: its stage config, the state that re-creates its structure, and
    the files it exports. Every `slimkit.train.Modifier` is one; a protocol keeps model files independent of
    training."""

    config: MethodConfig

    def state_dict(self) -> dict[str, Any]: ...

    def artifacts(self) -> dict[str, Any]: ...


def save_model(model: nn.Module, path: Path, config: ModelConfig, in_channels: int, num_classes: int | None,
               input_size: int, modifiers: Sequence[SavedStage] = ()) -> None:
    """Write the weights, the resolved architecture, and each stage with the state (a channel plan, say)
    that `load` needs to re-create the compressed structure. `num_classes` is the data's (None for data
    without class names: then the config's own, as build_model took it)."""
    classes = num_classes if num_classes is not None else config.num_classes
    if classes is None:
        raise SlimkitError(f"model {config.label!r}: the data has no class names, so the model file needs "
                           f"model.num_classes")
    arch = config.model_copy(update={"in_channels": in_channels, "num_classes": classes,
                                     "input_size": input_size, "checkpoint": None})
    stages = [{"stage": {m.config.kind: m.config.model_dump(mode="json")}, "state": m.state_dict()}
              for m in modifiers]
    atomic_save({"format": MODEL_FORMAT, "arch": arch.model_dump(mode="json"), "stages": stages,
                 "state_dict": model.state_dict()}, Path(path))


def read_model_file(path: str | Path) -> tuple[ModelConfig, list[dict[str, Any]], dict[str, Any]]:
    """(architecture, stages, state_dict) of a slimkit model file, after weights_only loading and the schema
    check of `checked_model`."""
    return checked_model(safe_load(Path(path), MODEL_FORMAT), path)


def checked_model(saved: dict[str, Any], path: str | Path) -> tuple[ModelConfig, list[dict[str, Any]],
                                                                     dict[str, Any]]:
    """(architecture, stages, state_dict) of a loaded model or deployed-model payload: required fields present
    and of the right kind, the architecture a valid (bounded) zoo config with its shape facts, every stage a
    valid method config, the state_dict all tensors. Anything else is a CheckpointError naming the file and
    the field; a file never makes slimkit allocate what its fields claim before they are checked."""
    checked_field(saved, "arch", dict, path)
    state_dict = checked_field(saved, "state_dict", dict, path, values=torch.Tensor)
    stages = checked_field(saved, "stages", list, path) if "stages" in saved else []
    try:  # a file names no code to run: an import path in it is checked for form, never imported
        arch = ModelConfig.model_validate(saved["arch"], context=validation_context(CodeTrust.NONE))
    except ValidationError as exc:
        raise CheckpointError(f"{path}: " + "; ".join(describe_errors(exc, ModelConfig, ("arch",)))) from None
    if arch.factory is not None:
        raise CheckpointError(f"{path}: field 'arch.factory' names code ({arch.factory!r}); a model file rebuilds "
                              f"zoo models only, and slimkit never runs code a file names")
    in_channels, num_classes, input_size = arch.in_channels, arch.num_classes, arch.input_size
    if arch.name is None or in_channels is None or num_classes is None or input_size is None:
        missing = [k for k in ("name", "in_channels", "num_classes", "input_size") if getattr(arch, k) is None]
        raise CheckpointError(f"{path}: field 'arch' lacks {', '.join(missing)}")
    too_large = size_issue(arch, in_channels, num_classes, input_size)
    if too_large is not None:
        raise CheckpointError(f"{path}: field 'arch': {too_large}")
    for i, entry in enumerate(stages):
        checked_field(stages, i, dict, path, where="stages")
        if "state" in entry:
            checked_field(entry, "state", dict, path, where=f"stages[{i}]")
        try:
            parse_stage(checked_field(entry, "stage", dict, path, where=f"stages[{i}]"), ("stages", i))
        except RecipeError as exc:
            raise CheckpointError(f"{path}: " + "; ".join(exc.issues)) from None
    return arch, stages, state_dict


@contextmanager
def _state_fits_its_stage(i: int, method: str, source: str) -> Iterator[None]:
    """A saved stage state its method cannot use becomes a CheckpointError naming the file, the stage and what
    did not fit."""
    try:
        yield
    except (KeyError, TypeError, ValueError, IndexError, SlimkitError) as exc:
        detail = f"it lacks {exc}" if isinstance(exc, KeyError) else first_line(exc)
        raise CheckpointError(f"{source}: field 'stages[{i}].state' does not fit its {method} stage: "
                              f"{detail}") from None


def rebuild(arch: ModelConfig | dict[str, Any], stages: Sequence[dict[str, Any]],
            state_dict: dict[str, Any], source: str = "the saved model") -> nn.Module:
    """Build the zoo architecture, re-create each stage's structure from its state, load the weights."""
    arch = arch if isinstance(arch, ModelConfig) else ModelConfig.model_validate(arch)
    model = build_model(arch, arch.in_channels, arch.num_classes, arch.input_size)
    for i, entry in enumerate(stages):
        modifier = build_modifier(parse_stage(entry["stage"], ("stages", i)))
        with _state_fits_its_stage(i, modifier.config.method, source):
            modifier.load_state_dict(entry.get("state", {}))
            model = modifier.rebuild_structure(model)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: weights do not fit the architecture {arch.name}: {exc}") from None
    return model.eval()


def _by_name(exported: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each stage's exported files (in stage order) merged by file name; a name that more than one stage exports
    is kept once per stage, as `stage<i>-<name>`, so that no stage's file hides another's."""
    counts = Counter(name for files in exported for name in files)
    return {name if counts[name] == 1 else f"stage{i}-{name}": data
            for i, files in enumerate(exported) for name, data in files.items()}


def exported_artifacts(stages: Sequence[SavedStage]) -> dict[str, Any]:
    """Every file the stages export (`Modifier.artifacts`), by file name (`stage<i>-<name>` where two stages
    export one name)."""
    return _by_name([stage.artifacts() for stage in stages])


def save_artifacts(stages: Sequence[SavedStage], folder: Path) -> list[Path]:
    """Write every exported file (see `exported_artifacts`) into `folder` as JSON, atomically; their paths."""
    paths = []
    for name, data in exported_artifacts(stages).items():
        paths.append(Path(folder) / name)
        atomic_write_text(paths[-1], json.dumps(data, indent=1))
    return paths


def read_artifacts(stages: Sequence[dict[str, Any]], source: str = "the saved model") -> dict[str, Any]:
    """The files a model file's stages export, by name (see `exported_artifacts`), re-derived from the stages'
    saved states, so a model.pt away from its run folder still has them."""
    exported = []
    for i, entry in enumerate(stages):
        modifier = build_modifier(parse_stage(entry["stage"], ("stages", i)))
        with _state_fits_its_stage(i, modifier.config.method, source):
            modifier.load_state_dict(entry.get("state", {}))
            exported.append(modifier.artifacts())
    return _by_name(exported)


def load(source: str | Path | ModelConfig | dict[str, Any], plan: ChannelPlan | dict[str, Any] | None = None,
         state_dict: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild a saved model, in eval mode, without unpickling any class.

    `load(path)` reads a model.pt written by slimkit. `load(arch, plan, state_dict)` rebuilds a channel-pruned
    model from its architecture (a ModelConfig or its dict), its plan of kept indices and its state_dict.
    """
    if plan is not None or state_dict is not None:
        if plan is None or state_dict is None:
            raise CheckpointError("load(arch, plan, state_dict) needs all three")
        arch = source if isinstance(source, ModelConfig) else ModelConfig.model_validate(source)
        model = apply_plan(build_model(arch, arch.in_channels, arch.num_classes, arch.input_size), plan)
        try:
            model.load_state_dict(state_dict)
        except RuntimeError as exc:
            raise CheckpointError(f"the state_dict does not fit {arch.name} pruned by this plan: {exc}") from None
        return model.eval()
    if isinstance(source, (ModelConfig, dict)):
        raise CheckpointError("load(arch) rebuilds a channel-pruned model only with its plan and state_dict: "
                              "load(arch, plan, state_dict); load(path) reads a model file")
    arch, stages, state_dict = read_model_file(source)
    return rebuild(arch, stages, state_dict, str(source))


def load_weights(model: nn.Module, path: Path) -> None:
    """Initialise `model` from a slimkit model file or a trainer's best.pt/checkpoint.pt."""
    saved = safe_load(Path(path), MODEL_FORMAT, WEIGHTS_FORMAT, CHECKPOINT_FORMAT)
    state = checked_field(saved, "state_dict" if saved["format"] == MODEL_FORMAT else "model", dict, path,
                          values=torch.Tensor)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit this model: {exc}") from None
