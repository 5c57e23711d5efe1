"""The shared machinery of every mask-based pruning method: masks on the selected layers, a sparsity
schedule over a window of epochs, exact-count selection from scores, and squashing at the end.

A method says three things: how it scores weights (`scores`), how it picks a mask from scores at a
sparsity (`select`: global or per-layer top-k, N:M groups, balanced groups), and how its target rises
(`schedule`). Everything else, including checkpoints and DDP agreement, lives here once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, TypeVar

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.layers import LayerSelection, known_adapter, select_layers, selection_issues
from slimkit.methods import MethodConfig
from slimkit.sparsity.blocks import block_scores, check_block, expand_blocks
from slimkit.sparsity.masks import WeightMask, add_mask, raw_weight, remove_mask
from slimkit.sparsity.schedules import cubic_sparsity
from slimkit.sparsity.topk import global_masks, layerwise_masks, refuse_empty
from slimkit.train import distributed
from slimkit.train.gradients import loss_gradients
from slimkit.train.modifier import Modifier, TrainContext


class MaskConfig(MethodConfig):
    """Base of every mask pruner's config: what PruneModifier's shared machinery (masks on the selected
    layers, the schedule window) reads. PruneConfig is the one with a sparsity target; N:M and PatDNN
    define theirs by their own fields."""

    if TYPE_CHECKING:
        # a field of every subclass, declared by each (with its own default, at its own place in the
        # recipe's key order); here only so that the type checker knows every mask config has it
        layers: LayerSelection

    @property
    def mask_updates_per_epoch(self) -> int:
        return 1


class PruneConfig(MaskConfig):
    """Shared by pruning methods: the final sparsity, its scope and the layers it covers."""

    kind = "prune"
    sparsity: float = Field(ge=0, lt=1, description="fraction of weights removed in the selected layers")
    scope: Literal["global", "layer"] = "global"
    max_layer_sparsity: float | None = Field(
        None, gt=0, le=1, description="global scope: no layer loses more than this share of its weights")
    layers: LayerSelection = Field(default_factory=LayerSelection)
    block: int = Field(1, description="consecutive input channels kept or dropped together (1: unstructured; "
                       "4: one 32-bit lane of int8 weights, the int8 sparse kernels' layout)")

    blocks_supported: ClassVar[bool] = True  # False where a method's own `select` ignores blocks

    @field_validator("block")
    @classmethod
    def _block_size(cls, block: int) -> int:
        return check_block(block)

    @model_validator(mode="after")
    def _block_allowed(self) -> PruneConfig:
        if self.block != 1 and not self.blocks_supported:
            raise ValueError(f"'block': {self.method} chooses weights in its own groups, so only block 1 is "
                             f"allowed, not {self.block}")
        return self

    @property
    def schedule_start(self) -> float:
        """Where the sparsity schedule starts: the target itself for a method that prunes at once."""
        return self.sparsity


class GradualConfig(PruneConfig):
    """A target that rises from initial_sparsity at start_epoch to sparsity at end_epoch (default: the last)."""

    initial_sparsity: float = Field(0.0, ge=0, lt=1)
    updates_per_epoch: int = Field(4, ge=1)

    @property
    def schedule_start(self) -> float:
        return self.initial_sparsity

    @property
    def mask_updates_per_epoch(self) -> int:
        return self.updates_per_epoch


ConfigT = TypeVar("ConfigT", bound=MaskConfig)


class PruneModifier(Modifier, Generic[ConfigT]):
    """Base of the mask-based pruners. Subclasses override `scores`, `select` and `schedule` as needed; the
    defaults of `final`, `schedule`, `select` and `summary` read a PruneConfig, and a method with another
    config (N:M, PatDNN) overrides those it reaches."""

    config: ConfigT
    scored_masks = False  # masks carry trainable scores (OptG, movement)
    monotone = True  # a pruned weight never returns, so a target below the current one changes nothing
    gradient_scores = False  # scores come from local gradients and are averaged over ranks before top-k
    gradual = False  # the target rises over [start_epoch, end_epoch]; otherwise it jumps at start_epoch

    def __init__(self, config: ConfigT):
        super().__init__(config)
        self.current = 0.0
        self.masks: dict[str, tuple[nn.Module, WeightMask]] = {}
        self.steps_per_epoch = 1
        self.end_epoch = config.start_epoch
        self.ctx: TrainContext | None = None

    @property
    def prune_config(self) -> PruneConfig:
        """The config as a PruneConfig, for the defaults that read its sparsity target, scope and blocks."""
        if not isinstance(self.config, PruneConfig):
            raise SlimkitError(f"{type(self).__name__} has a {type(self.config).__name__}, not a PruneConfig: it "
                               f"must override the PruneModifier default that was called")
        return self.config

    @property
    def final(self) -> float:
        """The sparsity the method ends at."""
        return self.prune_config.sparsity

    def check(self, model: nn.Module) -> list[str]:
        return selection_issues(model, self.config.layers, "layers")

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        layers = select_layers(model, self.config.layers)
        self.masks = {name: (m, add_mask(m, scored=self.scored_masks)) for name, m in layers.items()}
        self.steps_per_epoch = max(1, ctx.steps_per_epoch)
        self.ctx = ctx
        if self.gradual:
            self.end_epoch = self.config.end_epoch if self.config.end_epoch is not None else ctx.epochs

    # --- schedule -------------------------------------------------------------------------------
    def schedule(self, progress: float) -> float:
        """Target sparsity at `progress` in [0, 1] through the window: Zhu & Gupta's cubic by default."""
        return cubic_sparsity(progress, self.prune_config.schedule_start, self.final)

    def progress(self, step: int) -> float:
        """The fraction of the window [start_epoch, end_epoch] elapsed after `step` optimiser steps, in [0, 1]."""
        start, end = self.config.start_epoch * self.steps_per_epoch, self.end_epoch * self.steps_per_epoch
        return 1.0 if end <= start else min(1.0, max(0.0, (step - start) / (end - start)))

    def target(self, step: int) -> float:
        """Target sparsity after `step` optimiser steps."""
        if step < self.config.start_epoch * self.steps_per_epoch:
            return 0.0
        return self.schedule(self.progress(step))

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        if epoch >= self.config.start_epoch:
            self.prune_to(self.target(epoch * self.steps_per_epoch))

    def on_step_end(self, step: int, ctx: TrainContext) -> None:
        start, end = self.config.start_epoch * self.steps_per_epoch, self.end_epoch * self.steps_per_epoch
        if not start < step <= end:
            return
        interval = max(1, self.steps_per_epoch // self.config.mask_updates_per_epoch)
        if (step - start) % interval == 0 or step == end:
            self.prune_to(self.target(step))

    # --- masks ------------------------------------------------------------------------------------
    def scores(self) -> dict[str, Tensor]:
        """Importance of every weight; the default is the magnitude of the weight as the model sees it."""
        return {n: (raw_weight(m) * mask.mask).abs() for n, (m, mask) in self.masks.items()}

    def batch_taylor_scores(self, batches: int) -> dict[str, Tensor]:
        """|w * g| with g the gradient of the task's loss summed over the first `batches` training batches
        (local to this rank: a method using it sets gradient_scores so they are averaged)."""
        if self.ctx is None:
            raise SlimkitError(f"{self.name} scores weights by their gradients, which needs attach() first")
        with loss_gradients(self.ctx.model, self.ctx.batches(batches, f"{self.name} scores"), self.ctx.objective):
            return {
                n: (raw_weight(m) * _gradient(raw_weight(m), n)).abs().detach() for n, (m, _) in self.masks.items()
            }

    def tiebreak(self) -> dict[str, Tensor] | None:
        """What decides between equal scores (before the flat index); None: the index alone."""
        return None

    def select(self, scores: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
        """Keep masks holding exactly `sparsity` zeros, over all layers at once or per layer."""
        config = self.prune_config
        if config.block > 1:
            return self.select_blocks(scores, sparsity)
        if config.scope == "layer":
            return layerwise_masks(scores, sparsity, self.tiebreak())
        return global_masks(scores, sparsity, self.tiebreak(), config.max_layer_sparsity)

    def select_blocks(self, scores: dict[str, Tensor], sparsity: float) -> dict[str, Tensor]:
        """`select` over blocks of `config.block` input channels (blocks.py): a block ranks by the sum of its
        weights' scores (its L1 norm for magnitude), and whole blocks are kept best first until
        keep_count(n, sparsity) weights are, so the sparsity reached is the target rounded down to a block."""
        config, tiebreak = self.prune_config, self.tiebreak()
        block = config.block
        adapters = {n: known_adapter(self.masks[n][0]) for n in scores}  # blocks run along inputs, whatever the storage
        ranked, sizes = {}, {}
        for name, s in scores.items():
            ranked[name], sizes[name] = block_scores(adapters[name].canonical(s), block)
        ties = {n: block_scores(adapters[n].canonical(t), block)[0] for n, t in tiebreak.items()} if tiebreak else None
        if config.scope == "layer":
            kept = layerwise_masks(ranked, sparsity, ties, sizes)
        else:
            kept = global_masks(ranked, sparsity, ties, config.max_layer_sparsity, sizes)
        out = {}
        for name, s in scores.items():
            inputs = adapters[name].canonical(s).shape[1]
            out[name] = adapters[name].stored(expand_blocks(kept[name], block, inputs))
        return out

    def prune_to(self, sparsity: float) -> None:
        """Recompute the masks at `sparsity` (for a monotone method, only when it is above the current one)."""
        if self.monotone and sparsity <= self.current:
            return
        scores = {n: s.detach().float().clone() for n, s in self.scores().items()}  # may run a backward pass
        with torch.no_grad():
            if self.gradient_scores:
                for s in scores.values():
                    distributed.all_reduce_mean(s)
            for name, new in refuse_empty(self.select(scores, sparsity), sparsity).items():
                self.masks[name][1].mask.copy_(new)
        self.current = sparsity

    def achieved_sparsity(self) -> float:
        total = sum(mask.mask.numel() for _, mask in self.masks.values())
        kept = sum(int(mask.mask.sum()) for _, mask in self.masks.values())
        return 1.0 - kept / max(total, 1)

    def is_complete(self, epoch: int) -> bool:
        return self.current >= self.final

    def finalize(self, model: nn.Module) -> nn.Module:
        if self.current != self.final:  # the mask of the last epochs is kept once it is at the target
            self.prune_to(self.final)
        for module, _ in self.masks.values():
            remove_mask(module)
        return model

    def summary(self) -> dict[str, Any]:
        config = self.prune_config
        return {"method": self.name, "target_sparsity": self.final, "scope": config.scope,
                "layers": list(self.masks)} | ({"block": config.block} if config.block > 1 else {})

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.current = float(state["current"])


def _gradient(weight: Tensor, layer: str) -> Tensor:
    """`weight.grad` after a backward pass; a weight the loss did not reach cannot be scored by its gradient."""
    if weight.grad is None:
        raise SlimkitError(f"{layer}.weight got no gradient from the loss, so it cannot be scored by |w * g|")
    return weight.grad
