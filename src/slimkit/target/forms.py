"""The forms a layer can take, and the ordinary recipe stages that give layers their forms.

A layer's form is its kind (dense fp32, dense int8, block-sparse int8 at a sparsity, binary) and its output
width (a channel group's width, chosen per group: target.groups). `form_stages` turns a choice of forms into
the stages any recipe could hold: one channels stage with every group's width (`widths`), one magnitude
prune stage per sparsity (blocks of 4 input channels), one binarize stage and one 8-bit quantize stage naming
their layers. The same stages give a layer its form everywhere: in the single-layer models the tables time
(target.tables), in the one-shot copies the sensitivities are measured on (target.sensitivity), and in the
per-layer recipe the run fine-tunes.
"""

from __future__ import annotations

import copy
import glob
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from slimkit.errors import SlimkitError
from slimkit.methods import build_modifier, parse_stage
from slimkit.target.groups import channels_of
from slimkit.train.compression import Compression
from slimkit.train.objective import Objective

Kind = Literal["fp32", "int8", "sparse_int8", "binary"]
DENSE: Kind = "fp32"
BLOCK = 4  # input channels kept or dropped together: one 32-bit lane of int8 weights (sparsity/blocks.py)
WHOLE: dict[str, Kind] = {"fp32": "fp32", "int8": "int8", "binary": "binary"}  # kinds without a parameter


@dataclass(frozen=True)
class LayerKind:
    """What a layer computes with, whatever its width: fp32, int8, block-sparse int8 at `sparsity`, binary."""

    kind: Kind
    sparsity: float = 0.0

    @property
    def name(self) -> str:
        return f"sparse_int8@{self.sparsity:g}" if self.kind == "sparse_int8" else self.kind

    @property
    def keeps_width(self) -> bool:
        """Sparse and binary forms are measured and chosen at the layer's full width only."""
        return self.kind in ("sparse_int8", "binary")

    @classmethod
    def parse(cls, name: str) -> LayerKind:
        """The kind `name` names (as `name` writes it)."""
        kind, _, sparsity = name.partition("@")
        if kind in WHOLE and not sparsity:
            return cls(WHOLE[kind])
        try:
            fraction = float(sparsity) if kind == "sparse_int8" else None
        except ValueError:
            fraction = None
        if fraction is None or not 0 < fraction < 1:
            raise SlimkitError(f"{name!r} is not a layer form; forms are fp32, int8, sparse_int8@<sparsity in (0, 1)> "
                               f"and binary")
        return cls("sparse_int8", fraction)


FP32 = LayerKind(DENSE)


def target_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers a target chooses forms for: every plain Conv2d and Linear (a subclass or a parametrized layer
    has been given a form already, and channel surgery slices plain layers only)."""
    return {name: module for name, module in model.named_modules() if type(module) in (nn.Conv2d, nn.Linear)}


def layer_kinds(module: nn.Module, first_conv: bool, int8: bool, sparsities: list[float],
                binary: str | None) -> list[LayerKind]:
    """The kinds a layer may take under a target's options: fp32 always; int8 and block-sparse int8 with
    `int8` (sparse only where a row holds more than one block of 4 input channels); binary convs with a
    binarize method, never the first conv (it reads the image)."""
    kinds = [FP32]
    grouped = isinstance(module, nn.Conv2d) and module.groups != 1
    if int8 and not grouped:
        kinds.append(LayerKind("int8"))
        if channels_of(module)[0] > BLOCK:
            kinds += [LayerKind("sparse_int8", s) for s in sparsities]
    if binary is not None and isinstance(module, nn.Conv2d) and not first_conv and not grouped:
        kinds.append(LayerKind("binary"))
    return kinds


def _named(layers: list[str]) -> dict[str, Any]:
    """A layer selection of exactly these layers (names escaped: a selection matches fnmatch patterns)."""
    return {"include": [glob.escape(name) for name in layers], "skip_first_conv": False, "skip_last_linear": False}


def form_stages(kinds: Mapping[str, LayerKind], widths: Mapping[str, int], *, binary: str | None,
                quantize_epoch: int = 0, calibration_batches: int = 4) -> list[dict[str, Any]]:
    """The recipe stages that give each layer in `kinds` its kind and each layer in `widths` its output width.
    Channels are sliced first (the stage prunes as it attaches), then masks, binary layers and quantizers go
    on the sliced layers; the quantizers start at `quantize_epoch` (fine-tuning in float before QAT)."""
    stages: list[dict[str, Any]] = []
    if widths:
        stages.append({"channels": {"method": "l1", "ratio": 0.0, "widths": dict(widths)}})
    by_sparsity: dict[float, list[str]] = {}
    for name, kind in kinds.items():
        if kind.kind == "sparse_int8":
            by_sparsity.setdefault(kind.sparsity, []).append(name)
    for sparsity, layers in sorted(by_sparsity.items()):
        stages.append({"prune": {"method": "magnitude", "sparsity": sparsity, "scope": "layer", "block": BLOCK,
                                 "layers": _named(layers)}})
    binary_layers = [name for name, kind in kinds.items() if kind.kind == "binary"]
    if binary_layers:
        if binary is None:
            raise SlimkitError(f"layers {', '.join(binary_layers)} are to be binary, and no binarize method is named")
        stages.append({"binarize": {"method": binary, "layers": _named(binary_layers)}})
    int8_layers = [name for name, kind in kinds.items() if kind.kind in ("int8", "sparse_int8")]
    if int8_layers:
        stages.append({"quantize": {"method": "uniform", "bits": 8, "first_last_bits": None,
                                    "layers": _named(int8_layers), "start_epoch": quantize_epoch,
                                    "calibration_batches": calibration_batches}})
    return stages


def apply_stages(model: nn.Module, stages: list[dict[str, Any]], batches: Sequence[Any],
                 objective: Objective) -> nn.Module:
    """A copy of `model` with `stages` applied at once, as a run's first epoch and its finalize apply them
    (slices, masks at their sparsity, binary layers, calibrated quantizers on `batches`), without training.
    `model` itself is not touched."""
    model = copy.deepcopy(model)
    if not stages:
        return model.eval()
    modifiers = [build_modifier(parse_stage(stage, ("stages", i))) for i, stage in enumerate(stages)]
    compression = Compression(model, modifiers, epochs=1, steps_per_epoch=1, data=list(batches), objective=objective)
    compression.start_epoch(0)
    return compression.finalize()
