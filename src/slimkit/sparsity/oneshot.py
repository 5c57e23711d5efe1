"""What the one-shot criteria (Wanda, SparseGPT) share: their config (target, layout, calibration batches) and
a PruneModifier that prunes once, layer by layer, from the inputs each layer gets on calibration batches.

Both prune a trained model without training it: the masks (and, for SparseGPT, the weights that compensate for
them) come from a few forward passes over the user's batches (sequential.py), so a recipe can run them with
`train.epochs: 0`, or fine-tune after. Each layer gets the layer-wise target; the layouts are the ones slimkit's
other pruners and kernels use: unstructured, N:M along input channels (nm.py) and blocks of input channels
(blocks.py; 4 is the int8 sparse operator's layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from slimkit.errors import SlimkitError, UnsupportedLayerError
from slimkit.layers import LayerSelection, known_adapter, select_layers
from slimkit.sparsity.blocks import check_block
from slimkit.sparsity.layer_inputs import feature_issue
from slimkit.sparsity.masks import raw_weight
from slimkit.sparsity.pruner import MaskConfig, PruneModifier
from slimkit.sparsity.sequential import LayerStatistic, prune_sequentially
from slimkit.sparsity.topk import refuse_empty
from slimkit.train.modifier import TrainContext


@dataclass(frozen=True)
class Layout:
    """Which weights a layer may lose together: `nm` = (n, m) keeps n of every m consecutive input channels at a
    kernel position; otherwise a `sparsity` share of the weights goes, in blocks of `block` input channels
    (1: one weight at a time). `sparsity` is the target either way (1 - n/m for N:M)."""

    sparsity: float
    nm: tuple[int, int] | None = None
    block: int = 1

    def describe(self) -> dict[str, Any]:
        if self.nm is not None:
            return {"layout": f"{self.nm[0]}:{self.nm[1]}"}
        return {"layout": "unstructured" if self.block == 1 else f"block-{self.block}"}


class OneShotConfig(MaskConfig):
    """Shared by the one-shot criteria: a target as `sparsity` (unstructured, or `block`) or as `n` and `m`
    (N:M), the layers, and how many calibration batches are measured."""

    kind = "prune"
    sparsity: float | None = Field(None, ge=0, lt=1, description="share of each selected layer's weights removed "
                                                                 "(give this, or n and m)")
    n: int | None = Field(None, ge=1, description="N:M: weights kept in every m consecutive input channels")
    m: int | None = Field(None, ge=2, description="N:M: the group length")
    block: int = Field(1, description="consecutive input channels kept or dropped together (1: unstructured; "
                       "4: the int8 sparse operator's layout)")
    calibration_batches: int = Field(8, ge=1, description="training batches whose inputs are measured")
    layers: LayerSelection = Field(default_factory=LayerSelection)

    @field_validator("block")
    @classmethod
    def _block_size(cls, block: int) -> int:
        return check_block(block)

    @field_validator("end_epoch")
    @classmethod
    def _one_shot(cls, end_epoch: int | None) -> None:
        if end_epoch is not None:
            raise ValueError(f"{end_epoch}: a one-shot method prunes once, at start_epoch; remove end_epoch")

    @model_validator(mode="after")
    def _one_layout(self) -> OneShotConfig:
        nm = self.n is not None or self.m is not None
        if nm and (self.n is None or self.m is None):
            raise ValueError("N:M needs both n and m")
        if nm == (self.sparsity is not None):
            raise ValueError("give either sparsity (unstructured, or with block) or n and m (N:M), not "
                             + ("both" if nm else "neither"))
        if self.n is not None and self.m is not None and self.n >= self.m:
            raise ValueError(f"n must be below m, got n={self.n}, m={self.m}")
        if nm and self.block != 1:
            raise ValueError(f"'block': N:M groups are single weights, so only block 1 is allowed with n and m, "
                             f"not {self.block}")
        return self

    @property
    def layout(self) -> Layout:
        if self.n is not None and self.m is not None:
            return Layout(1 - self.n / self.m, (self.n, self.m))
        assert self.sparsity is not None  # _one_layout
        return Layout(self.sparsity, None, self.block)


ConfigT = TypeVar("ConfigT", bound=OneShotConfig)


class OneShotModifier(PruneModifier[ConfigT]):
    """Prunes once, at start_epoch (at attach for 0, so a later stage of the recipe, a PTQ quantizer say, sees
    the pruned weights; at finalize when start_epoch is train.epochs, so the trained model is pruned). A method
    says what it measures of a layer's inputs (`new_statistic`) and how it prunes the layer from that
    (`prune_layer`)."""

    def __init__(self, config: ConfigT):
        super().__init__(config)
        self.calibration = {"batches": 0, "groups": 0}  # batches measured; groups: partial passes over them

    @property
    def final(self) -> float:
        return self.config.layout.sparsity

    def schedule(self, progress: float) -> float:
        return self.final

    def check(self, model: nn.Module) -> list[str]:
        issues = super().check(model)
        if issues:
            return issues
        return [f"'layers': {name}: {issue}; leave it out (layers.exclude: [{name!r}])"
                for name, module in select_layers(model, self.config.layers).items()
                if (issue := feature_issue(module)) is not None]

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        issues = self.check(model)  # also where no pipeline checked first (prepare, one_shot)
        if issues:
            raise UnsupportedLayerError(f"{self.name}: " + "; ".join(issues))
        super().attach(model, ctx)
        if self.config.start_epoch == 0 and not ctx.restoring:
            self.prune_to(self.final)

    def prune_to(self, sparsity: float) -> None:
        if sparsity <= self.current:  # pruned once: masks and weights live in the model's state from then on
            return
        if self.ctx is None:
            raise SlimkitError(f"{self.name} prunes on calibration batches, which needs attach() first")
        ctx, count = self.ctx, self.config.calibration_batches
        batches = ctx.batches(count, f"{self.name} calibration (calibration_batches: {count})")
        layers = {name: module for name, (module, _) in self.masks.items()}
        groups = prune_sequentially(ctx.model, layers, batches, ctx.objective.forward, self.new_statistic,
                                    self._prune, all_reduce=ctx.dist.enabled)
        self.calibration = {"batches": len(batches), "groups": groups}
        self.current = sparsity

    def _prune(self, name: str, module: nn.Module, statistic: LayerStatistic) -> None:
        mask = self.masks[name][1]
        adapter = known_adapter(module)
        with torch.no_grad():
            weight = adapter.canonical(raw_weight(module) * mask.mask).detach()
            try:
                kept, new_weight = self.prune_layer(weight, statistic)
            except SlimkitError as exc:
                raise SlimkitError(f"{self.name} on {name}: {exc}") from None
            kept &= adapter.canonical(mask.mask)  # what a mask already pruned (score 0) stays pruned
            refuse_empty({name: kept}, self.final)
            mask.mask.copy_(adapter.stored(kept))
            if new_weight is not None:
                raw = raw_weight(module)
                raw.copy_(adapter.stored(new_weight).to(raw.dtype))

    # --- what a method says ------------------------------------------------------------------------------
    def new_statistic(self, module: nn.Module) -> LayerStatistic:
        """An empty accumulator of what this method measures of `module`'s inputs."""
        raise NotImplementedError

    def prune_layer(self, weight: Tensor, statistic: LayerStatistic) -> tuple[Tensor, Tensor | None]:
        """(keep mask, new weight or None to keep the weights) for one layer's canonical weight (out, in, ...),
        already masked by any earlier pruning, from its inputs' `statistic`."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        return {"method": self.name, "target_sparsity": self.final, **self.config.layout.describe(),
                "calibration": self.calibration, "layers": list(self.masks)}

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"calibration": self.calibration}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.calibration = {key: int(value) for key, value in state["calibration"].items()}
