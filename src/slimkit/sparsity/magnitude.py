"""Magnitude pruning, one-shot and gradual (Zhu & Gupta's cubic schedule), through parametrized masks.

One-shot pruning is the gradual schedule with an empty window, so one modifier serves both. Scores are
|W * M|: a pruned weight never returns, which makes the masks monotone over the schedule.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from slimkit.layers import LayerSelection, select_layers
from slimkit.recipe import MethodConfig, register_method
from slimkit.sparsity.masks import WeightMask, add_mask, raw_weight, remove_mask
from slimkit.sparsity.schedules import cubic_sparsity
from slimkit.sparsity.topk import global_masks, layerwise_masks
from slimkit.train.modifier import Modifier, TrainContext


class PruneConfig(MethodConfig):
    """Shared by unstructured pruning methods: the final sparsity, its scope and the layers it covers."""

    kind = "prune"
    sparsity: float = Field(ge=0, lt=1, description="fraction of weights removed in the selected layers")
    scope: Literal["global", "layer"] = "global"
    layers: LayerSelection = Field(default_factory=LayerSelection)


class MagnitudeConfig(PruneConfig):
    """Prune the smallest |w| once, at start_epoch, then train on with the mask fixed."""

    method: Literal["magnitude"] = "magnitude"


class GradualMagnitudeConfig(PruneConfig):
    """Raise sparsity from initial_sparsity to sparsity between start_epoch and end_epoch (cubic)."""

    method: Literal["gmp"] = "gmp"
    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    updates_per_epoch: int = Field(4, ge=1)


class MagnitudePruner(Modifier):
    config: PruneConfig

    def __init__(self, config: PruneConfig):
        super().__init__(config)
        self.current = 0.0
        self.masks: dict[str, tuple[nn.Module, WeightMask]] = {}
        self.steps_per_epoch = 1
        self.end_epoch = config.start_epoch

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        self.masks = {name: (m, add_mask(m)) for name, m in select_layers(model, self.config.layers).items()}
        self.steps_per_epoch = max(1, ctx.steps_per_epoch)
        if isinstance(self.config, GradualMagnitudeConfig):
            self.end_epoch = self.config.end_epoch if self.config.end_epoch is not None else ctx.epochs

    # --- schedule -------------------------------------------------------------------------------
    @property
    def _window(self) -> tuple[int, int]:
        return self.config.start_epoch * self.steps_per_epoch, self.end_epoch * self.steps_per_epoch

    def target(self, step: int) -> float:
        """Target sparsity after `step` optimiser steps."""
        start, end = self._window
        if step < start:
            return 0.0
        initial = getattr(self.config, "initial_sparsity", self.config.sparsity)
        progress = 1.0 if end <= start else (step - start) / (end - start)
        return cubic_sparsity(progress, initial, self.config.sparsity)

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        if epoch >= self.config.start_epoch:
            self.prune_to(self.target(epoch * self.steps_per_epoch))

    def on_step_end(self, step: int, ctx: TrainContext) -> None:
        start, end = self._window
        if not start < step <= end:
            return
        updates = getattr(self.config, "updates_per_epoch", 1)
        interval = max(1, self.steps_per_epoch // updates)
        if (step - start) % interval == 0 or step == end:
            self.prune_to(self.target(step))

    # --- masks ------------------------------------------------------------------------------------
    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Set masks so that exactly `sparsity` of the selected weights are zero; never lowers sparsity."""
        if sparsity <= self.current:
            return
        scores = {n: (raw_weight(m) * mask.mask).abs() for n, (m, mask) in self.masks.items()}
        select = global_masks if self.config.scope == "global" else layerwise_masks
        for name, new in select(scores, sparsity).items():
            self.masks[name][1].mask.copy_(new)
        self.current = sparsity

    def achieved_sparsity(self) -> float:
        total = sum(mask.mask.numel() for _, mask in self.masks.values())
        kept = sum(int(mask.mask.sum()) for _, mask in self.masks.values())
        return 1.0 - kept / max(total, 1)

    def is_complete(self, epoch: int) -> bool:
        return self.current >= self.config.sparsity

    def finalize(self, model: nn.Module) -> nn.Module:
        self.prune_to(self.config.sparsity)
        for module, _ in self.masks.values():
            remove_mask(module)
        return model

    def summary(self) -> dict[str, Any]:
        return {"method": self.name, "target_sparsity": self.config.sparsity, "scope": self.config.scope,
                "layers": list(self.masks)}

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = float(state["current"])


register_method(MagnitudeConfig, MagnitudePruner)
register_method(GradualMagnitudeConfig, MagnitudePruner)
