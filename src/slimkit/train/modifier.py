"""The modifier protocol: how every compression method plugs into training.

The trainer calls these hooks at fixed moments and knows no method by name. A method attaches its
masks or layers, may claim parameter groups (say, no weight decay on scores), reacts to epochs and
steps, may add a loss term, and finally makes its change permanent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from slimkit.recipe import MethodConfig
from slimkit.train.distributed import DistInfo


@dataclass
class TrainContext:
    """What a modifier may read about the run: the (unwrapped) model, its length and position, and ranks."""

    model: nn.Module
    epochs: int
    steps_per_epoch: int
    train_loader: DataLoader | None = None
    dist: DistInfo = field(default_factory=DistInfo)
    epoch: int = 0
    step: int = 0
    optimizer: Optimizer | None = None
    structure_changed: bool = False  # set by a modifier that replaced parameters (channel surgery)


class Modifier:
    """Base class with no-op hooks; a method overrides the ones it needs."""

    config: MethodConfig

    def __init__(self, config: MethodConfig):
        self.config = config

    @property
    def name(self) -> str:
        return f"{self.config.kind}:{self.config.method}"

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        """Wrap layers or register masks. Runs before the optimiser exists and before any resume."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimiser groups for parameters this method treats specially; the rest form the default group."""
        return []

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        """Epoch-level schedules: sparsity targets, temperatures, binarizer parameters."""

    def on_step_end(self, step: int, ctx: TrainContext) -> None:
        """After optimiser step number `step` (1-based, counted over the whole run)."""

    def loss(self, outputs: Tensor, batch: tuple[Tensor, Tensor], ctx: TrainContext) -> Tensor | None:
        """An extra loss term (distillation, penalties), or None."""
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

    def state_dict(self) -> dict[str, Any]:
        """State that is not in the model's own state_dict, saved with each checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""
