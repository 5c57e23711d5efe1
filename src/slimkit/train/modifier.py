"""The modifier protocol: how every compression method plugs into training.

The trainer calls these hooks at fixed moments and knows no method by name. A method attaches its
masks or layers, may claim parameter groups (say, no weight decay on scores), reacts to epochs and
steps, may add a loss term, and finally makes its change permanent.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer

from slimkit.errors import SlimkitError
from slimkit.methods import MethodConfig
from slimkit.train.device import device_of
from slimkit.train.distributed import DistInfo
from slimkit.train.objective import Objective


@dataclass
class TrainContext:
    """What a modifier may read about the run: the (unwrapped) model, its length and position, ranks, the
    objective, and training batches (the trainer's loader, or what the user passed to `prepare`)."""

    model: nn.Module
    epochs: int
    steps_per_epoch: int
    data: Iterable[Any] | None = None
    dist: DistInfo = field(default_factory=DistInfo)
    epoch: int = 0
    step: int = 0
    optimizer: Optimizer | None = None
    structure_changed: bool = False  # set by a modifier that replaced parameters (channel surgery)
    objective: Objective = field(default_factory=Objective)
    restoring: bool = False  # attach runs before a saved state loads: build structure, measure nothing from data

    def batches(self, count: int, needed_by: str) -> list[Any]:
        """The first `count` training batches on the model's device, or an error saying that `needed_by` needs
        data."""
        if self.data is None:
            raise SlimkitError(f"{needed_by} needs training batches; pass data=<your DataLoader> (and loss_fn= "
                               f"for a loss other than cross-entropy) to slimkit.prepare")
        batches = list(itertools.islice(iter(self.data), count))
        if not batches:
            raise SlimkitError(f"{needed_by} needs training batches, and the data yielded none")
        device = device_of(self.model)
        return [self.objective.to_device(batch, device) for batch in batches]

    def input_tensors(self, count: int, needed_by: str) -> list[Tensor]:
        """The model inputs of the first `count` batches, for methods that trace the model with one tensor."""
        inputs = []
        for batch in self.batches(count, needed_by):
            args, kwargs, _ = self.objective.split(batch)
            if kwargs or len(args) != 1:
                raise SlimkitError(f"{needed_by} traces the model on one input tensor; these batches give keyword "
                                   f"inputs {sorted(kwargs)}")
            inputs.append(args[0])
        return inputs


class Modifier:
    """Base class with no-op hooks; a method overrides the ones it needs."""

    config: MethodConfig

    def __init__(self, config: MethodConfig):
        self.config = config

    @property
    def name(self) -> str:
        return f"{self.config.kind}:{self.config.method}"

    def check(self, model: nn.Module) -> list[str]:
        """Problems this method would meet on `model` (a layer selection that picks nothing, a tap that does
        not exist), as messages; called on the built model before any training, and must not change it."""
        return []

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        """Wrap layers or register masks. Runs before the optimiser exists and before any resume; with
        `ctx.restoring` a saved state and the model's weights follow, so nothing is measured on data."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimiser groups for parameters this method treats specially; the rest form the default group."""
        return []

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        """Epoch-level schedules: sparsity targets, temperatures, binarizer parameters."""

    def on_step_end(self, step: int, ctx: TrainContext) -> None:
        """After optimiser step number `step` (1-based, counted over the whole run)."""

    def loss(self, outputs: Tensor, batch: Any, ctx: TrainContext) -> Tensor | None:
        """An extra loss term (distillation, penalties), or None. `outputs` is the model's output tensor
        (`.logits` unwrapped); `batch` is the batch as the loader gave it (`ctx.objective` splits it)."""
        return None

    def is_complete(self, epoch: int) -> bool:
        """True once the model holds this method's final form; only then may an epoch count as 'best'."""
        return True

    def finalize(self, model: nn.Module) -> nn.Module:
        """Make the change permanent (squash masks, slice channels) and return the model."""
        return model

    def rebuild_structure(self, model: nn.Module) -> nn.Module:
        """Give a freshly built model the module structure that finalize leaves behind (binary layers,
        sliced channels), so a saved state_dict loads into it. Masks squashed into weights need nothing."""
        return model

    def summary(self) -> dict[str, Any]:
        """Facts for the report: targets reached, layers touched."""
        return {"method": self.name}

    def artifacts(self) -> dict[str, Any]:
        """Files this method exports beside the finished model, by file name: JSON data that a user or a tool
        reads without slimkit (a channel plan, a pattern library). Derived from this modifier's state, so a
        finished run writes them into its folder and `slimkit info` reads them back from a model file's stages,
        each by its name; no code outside the method knows which method made them."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State that is not in the model's own state_dict, saved with each checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""
