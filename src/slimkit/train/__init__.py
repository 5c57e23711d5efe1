"""Training: the Trainer, the modifier protocol, checkpoints and DDP helpers."""

from slimkit.train.modifier import Modifier, TrainContext
from slimkit.train.trainer import Trainer, TrainResult, evaluate

__all__ = ["Modifier", "TrainContext", "TrainResult", "Trainer", "evaluate"]
