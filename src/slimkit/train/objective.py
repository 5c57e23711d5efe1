"""The objective: how a batch feeds the model, what its target is, and which loss and metric judge outputs.

It is the one place that knows batch and output conventions, so the trainer, the loop-facing API and every
gradient-based criterion read batches (and move them to the model's device) the same way: tuples
`(inputs, target)` or `(inputs,)`, and dicts (HF style: the model gets every key but `target_key` as keyword
arguments). Outputs are tensors, or objects and dicts carrying `.logits`. Anything else is an error that
names it; nothing is guessed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.train.device import move_tensors

LossFn = Callable[[Tensor, Tensor], Tensor]
MetricFn = Callable[[Tensor, Tensor], Tensor | float | tuple[Tensor | float, Tensor | float]]
IGNORE_INDEX = -100  # cross-entropy's (and HF's) marker for targets that do not count


def _describe(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def logits_of(outputs: Any) -> Tensor:
    """The tensor a model's output carries: the output itself, `.logits`, or `["logits"]`."""
    if isinstance(outputs, Tensor):
        return outputs
    logits = outputs.get("logits") if isinstance(outputs, Mapping) else getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise SlimkitError(f"model output of type {_describe(outputs)} is neither a tensor nor carries a `.logits` "
                       f"tensor; return a tensor, or compute the loss in your own loop with slimkit.prepare")


def class_dim(logits: Tensor, target: Tensor) -> int | None:
    """The class dimension when `target` holds class ids for `logits`: dim 1 as torch's losses take it
    ((N, C, ...) with target (N, ...)) or the last dim as HF models give it ((N, T, C) with target (N, T)).
    None when the target is not integer class ids; an error when both readings fit."""
    if target.is_floating_point() or target.dtype == torch.bool or logits.ndim < 1:
        return None
    shape, dims = tuple(target.shape), []
    if logits.ndim >= 2 and shape == tuple(logits.shape[:1] + logits.shape[2:]):
        dims.append(1)
    if shape == tuple(logits.shape[:-1]) and logits.ndim - 1 not in dims:
        dims.append(logits.ndim - 1)
    if len(dims) > 1:
        raise SlimkitError(f"class ids of shape {shape} fit outputs {tuple(logits.shape)} on dim 1 and on the last "
                           f"dim; pass loss_fn and metric to say which")
    return dims[0] if dims else None


def cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy over class ids on dim 1 or the last dim; targets equal to -100 do not count."""
    dim = class_dim(logits, target)
    if dim is None:
        raise SlimkitError(f"the default loss is cross-entropy on integer class ids, and the target is "
                           f"{target.dtype} of shape {tuple(target.shape)} for outputs {tuple(logits.shape)}; "
                           f"pass loss_fn (e.g. torch.nn.functional.mse_loss for regression)")
    if dim != 1:
        logits = logits.movedim(dim, 1)
    return nn.functional.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)


def accuracy(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """(hits, counted): targets (not -100) whose class the outputs rank first, and targets counted. As a
    pair, the mean over a whole data set is exact, not a mean of batch means."""
    dim = class_dim(logits, target)
    if dim is None:
        raise SlimkitError(f"accuracy needs integer class ids; the target is {target.dtype} of shape "
                           f"{tuple(target.shape)}; pass another metric or metric=None")
    counted = target != IGNORE_INDEX
    hits = (logits.argmax(dim) == target) & counted
    return hits.sum(), counted.sum()


@dataclass(frozen=True)
class Metric:
    """A score of outputs against targets; `name` keys the history ('acc' gives val_acc). `fn` returns a
    batch mean (weighted by batch size over a data set) or a pair (total, count) summed exactly."""

    name: str
    fn: MetricFn
    higher_is_better: bool = True


ACCURACY = Metric("acc", accuracy)


@dataclass(frozen=True)
class Objective:
    """Batch layout, loss and metric of a task. `loss_fn(outputs, target)` and `metric` get the output
    tensor (`.logits` unwrapped). The defaults (cross-entropy, accuracy) accept only integer class ids."""

    loss_fn: LossFn | None = None
    metric: Metric | None = ACCURACY
    target_key: str = "labels"
    label_smoothing: float = 0.0

    # --- batches ------------------------------------------------------------------------------------
    def split(self, batch: Any) -> tuple[tuple[Any, ...], dict[str, Any], Tensor | None]:
        """(positional inputs, keyword inputs, target or None) of one batch."""
        if isinstance(batch, Mapping):
            inputs = {k: v for k, v in batch.items() if k != self.target_key}
            if not inputs:
                raise SlimkitError(f"a dict batch with keys {sorted(batch)} has no model input besides the "
                                   f"target key {self.target_key!r}")
            return (), inputs, batch.get(self.target_key)
        if (isinstance(batch, Sequence) and not isinstance(batch, str) and 1 <= len(batch) <= 2
                and isinstance(batch[0], Tensor) and (len(batch) == 1 or isinstance(batch[1], Tensor))):
            return (batch[0],), {}, batch[1] if len(batch) == 2 else None
        raise SlimkitError(f"a batch of type {_describe(batch)} is not one slimkit reads; batches are tuples "
                           f"(inputs, target) or (inputs,) of tensors, or dicts of tensors (the model gets every "
                           f"key but {self.target_key!r} as a keyword argument)")

    @staticmethod
    def to_device(batch: Any, device: torch.device) -> Any:
        """The batch with its tensors on `device`, in the layout it came in (tuple, list or dict); every reader
        of batches (trainer, evaluation, the methods' scoring and calibration) moves them through this."""
        return move_tensors(batch, device)

    def target(self, batch: Any) -> Tensor:
        target = self.split(batch)[2]
        if target is None:
            where = f"key {self.target_key!r}" if isinstance(batch, Mapping) else "second element"
            raise SlimkitError(f"the batch has no target ({where}); a loss needs one")
        return target

    def forward(self, model: nn.Module, batch: Any) -> Any:
        """The model's raw output on `batch`."""
        args, kwargs, _ = self.split(batch)
        return model(*args, **kwargs)

    @staticmethod
    def batch_size(batch: Any) -> int:
        first = next(iter(batch.values())) if isinstance(batch, Mapping) else batch[0]
        return len(first)

    # --- judging outputs -----------------------------------------------------------------------------
    def loss(self, outputs: Any, target: Tensor) -> Tensor:
        logits = logits_of(outputs)
        if self.loss_fn is None:
            return cross_entropy(logits, target, self.label_smoothing)
        loss = self.loss_fn(logits, target)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise SlimkitError(f"loss_fn must return a scalar tensor; it returned {_describe(loss)}"
                               + (f" of shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else ""))
        return loss.reshape(())

    def score(self, outputs: Any, target: Tensor) -> tuple[float, float] | None:
        """(total, count) of the metric on one batch, so data-set means are exact; None without a metric."""
        return self.metric_score(outputs, target) if self.metric is not None else None

    def metric_score(self, outputs: Any, target: Tensor) -> tuple[float, float]:
        """`score` of an objective that has a metric."""
        if self.metric is None:
            raise SlimkitError("this objective has no metric to score")
        value = self.metric.fn(logits_of(outputs), target)
        if isinstance(value, tuple):
            return float(value[0]), float(value[1])
        n = len(target)
        return float(value.item() if isinstance(value, Tensor) else value) * n, float(n)

    @property
    def selects_by(self) -> str:
        """The history key that picks the best epoch: the metric on validation data, else the loss."""
        return f"val_{self.metric.name}" if self.metric is not None else "val_loss"

    def better(self, a: float, b: float) -> bool:
        """Whether selection score `a` beats `b`."""
        higher = self.metric.higher_is_better if self.metric is not None else False
        return a > b if higher else a < b

    def describe(self) -> dict[str, Any]:
        """What the report says about the objective."""
        loss = "cross-entropy" if self.loss_fn is None else getattr(self.loss_fn, "__name__", _describe(self.loss_fn))
        metric = None if self.metric is None else {"name": self.metric.name,
                                                   "higher_is_better": self.metric.higher_is_better}
        return {"loss": loss, "metric": metric}


def make_objective(loss_fn: LossFn | None = None, metric: Metric | MetricFn | str | None = "auto",
                   target_key: str = "labels", label_smoothing: float = 0.0) -> Objective:
    """An Objective from the friendly forms: metric 'auto' is accuracy with the default cross-entropy and
    none with a loss_fn of the user's; a bare function becomes a Metric named after it."""
    if metric == "auto":
        metric = ACCURACY if loss_fn is None else None
    elif metric == "accuracy":
        metric = ACCURACY
    elif isinstance(metric, str):
        raise SlimkitError(f"metric {metric!r} is not known; allowed: 'auto', 'accuracy', None, a "
                           f"slimkit.Metric or a function (outputs, target) -> float")
    elif metric is not None and not isinstance(metric, Metric):
        if not callable(metric):
            raise SlimkitError(f"metric must be a function (outputs, target) -> float, not {_describe(metric)}")
        metric = Metric(getattr(metric, "__name__", "metric"), metric)
    if loss_fn is not None and not callable(loss_fn):
        raise SlimkitError(f"loss_fn must be a function (outputs, target) -> scalar tensor, not {_describe(loss_fn)}")
    return Objective(loss_fn, metric, target_key, label_smoothing)
