"""Learning-rate schedules as pure functions of the global step, so resuming needs no scheduler state."""

from __future__ import annotations

import math

from slimkit.train.config import TrainConfig


class LRSchedule:
    """lr(step) = base_lr * factor(step): linear warm-up, then cosine to 0, step decay or constant. The
    warm-up is `warmup_steps` optimizer steps where set, else `warmup_epochs` epochs; one at least as long as
    the run ramps the learning rate through all of it (the cosine never starts)."""

    def __init__(self, config: TrainConfig, steps_per_epoch: int):
        self.config = config
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.total = max(1, config.epochs * self.steps_per_epoch)
        self.warmup = (config.warmup_steps if config.warmup_steps is not None
                       else round(config.warmup_epochs * self.steps_per_epoch))

    def factor(self, step: int) -> float:
        """Multiplier for the step about to be taken (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.config.schedule == "cosine":
            span = max(1, self.total - self.warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(step - self.warmup, span) / span))
        if self.config.schedule == "step":
            epoch = step // self.steps_per_epoch
            return self.config.gamma ** sum(epoch >= m for m in self.config.milestones)
        return 1.0
