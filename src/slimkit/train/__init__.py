"""Training: the loop-facing Compression API, the Trainer built on it, the modifier protocol, the
objective (batches, loss, metric), checkpoints and DDP helpers."""

from slimkit.train.compression import Compression
from slimkit.train.config import ObjectiveConfig, TrainConfig
from slimkit.train.modifier import Modifier, TrainContext
from slimkit.train.objective import Metric, Objective, make_objective
from slimkit.train.trainer import Trainer, TrainResult, evaluate

__all__ = ["Compression", "Metric", "Modifier", "Objective", "ObjectiveConfig", "TrainConfig", "TrainContext",
           "TrainResult", "Trainer", "evaluate", "make_objective"]
