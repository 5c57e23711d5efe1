"""Layer by layer through a model on calibration batches, each layer measured on the inputs that the layers
before it give once they are pruned: the sequential order of Wanda's and SparseGPT's code, for any model.

The papers' code walks a decoder's blocks: it keeps one block's inputs for every calibration sample, prunes the
block's layers from them, and runs the pruned block to make the next block's inputs. That needs to know where a
model's blocks are and what else they take (attention masks, caches). Here the model's own forward does the
walking: layers are taken in the order they run, and for each group of them the calibration batches go through
the model, already pruned up to that group, only as far as the group (a forward pre-hook stops the pass there).
What is held at any time is one group's statistics (a vector per layer for Wanda, a Hessian for SparseGPT) and
one batch's activations; the price is one partial forward pass per group, about half a forward on average.

Layers whose first calls read the very same input tensor, one right after another (a transformer's query, key
and value projections), form one group: none of them can change another's input, so they are measured in one
pass, and those that make the same features of it share one statistic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from slimkit.errors import SlimkitError
from slimkit.sparsity.layer_inputs import feature_key, feature_rows


class LayerStatistic(Protocol):
    """What a criterion accumulates from one layer's feature rows (layer_inputs.feature_rows)."""

    def add(self, rows: Tensor) -> None: ...

    def all_reduce(self) -> None:
        """Sum over data-parallel ranks, so every rank prunes alike."""

    def is_finite(self) -> bool: ...


class _GroupDone(BaseException):
    """Raised by a hook once the layers of a group have seen their inputs: the rest of the forward is not needed.
    A BaseException, so model code that catches Exception does not swallow it."""


def _first_input(name: str, args: tuple[Any, ...]) -> Tensor:
    if not args or not isinstance(args[0], Tensor):
        raise SlimkitError(f"{name} was called without a tensor as its first positional argument, so its input "
                           f"cannot be measured for one-shot pruning")
    return args[0]


@contextmanager
def _hooked(layers: dict[str, nn.Module], hook: Callable[[str, Tensor], None]) -> Iterator[None]:
    handles = [module.register_forward_pre_hook(lambda _m, args, n=name: hook(n, _first_input(n, args)))
               for name, module in layers.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def layer_groups(layers: dict[str, nn.Module], forward: Callable[[], Any]) -> tuple[list[list[str]], dict[str, int]]:
    """(groups in the order they run, calls per forward of each layer), from one forward pass. A layer the pass
    never calls is an error naming it: it could only be pruned without data."""
    calls = dict.fromkeys(layers, 0)
    groups: list[list[str]] = []
    shared: Tensor | None = None  # the input the current group's layers all read
    extends = False  # the previous call was a first call that joined or opened the current group

    def record(name: str, x: Tensor) -> None:
        nonlocal shared, extends
        calls[name] += 1
        if calls[name] > 1:
            extends = False
            return
        if extends and x is shared:
            groups[-1].append(name)
        else:
            groups.append([name])
            shared = x
        extends = True

    with _hooked(layers, record):
        forward()
    missing = [name for name, count in calls.items() if count == 0]
    if missing:
        raise SlimkitError(f"{', '.join(missing[:5])}{' and more' if len(missing) > 5 else ''} did not run on the "
                           f"calibration batch, so one-shot pruning has no inputs to measure them on; leave them "
                           f"out (layers.exclude)")
    return groups, calls


def prune_sequentially(model: nn.Module, layers: dict[str, nn.Module], batches: Sequence[Any],
                       forward: Callable[[nn.Module, Any], Any], new_statistic: Callable[[nn.Module], LayerStatistic],
                       prune: Callable[[str, nn.Module, LayerStatistic], None], *, all_reduce: bool) -> int:
    """Prune `layers` of `model` group by group (see the module's docstring): every calibration batch runs
    through `forward(model, batch)` up to the group, each layer's inputs feed its statistic
    (`new_statistic(module)`; layers of a group with the same features share one), and then `prune(name,
    module, statistic)` changes each layer of the group before the next group is measured. With `all_reduce`
    the statistics are summed over ranks first. Runs in eval mode without gradients; returns the number of
    groups (the partial passes made over the batches)."""
    if not batches:
        raise SlimkitError("one-shot pruning needs at least one calibration batch")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            groups, calls = layer_groups(layers, lambda: forward(model, batches[0]))
            for group in groups:
                _prune_group(model, {n: layers[n] for n in group}, calls, batches, forward, new_statistic, prune,
                             all_reduce)
    finally:
        model.train(was_training)
    return len(groups)


def _prune_group(model: nn.Module, group: dict[str, nn.Module], calls: dict[str, int], batches: Sequence[Any],
                 forward: Callable[[nn.Module, Any], Any], new_statistic: Callable[[nn.Module], LayerStatistic],
                 prune: Callable[[str, nn.Module, LayerStatistic], None], all_reduce: bool) -> None:
    owners: dict[Any, str] = {}  # feature key -> the layer whose calls add rows to the shared statistic
    for name, module in group.items():
        owners.setdefault(feature_key(module), name)
    statistics = {key: new_statistic(group[owner]) for key, owner in owners.items()}
    keys = {name: feature_key(module) for name, module in group.items()}
    seen = dict.fromkeys(group, 0)

    def measure(name: str, x: Tensor) -> None:
        if seen[name] >= calls[name]:  # a later call than the first batch made (the pass was not stopped)
            return
        seen[name] += 1
        if owners[keys[name]] == name:
            statistics[keys[name]].add(feature_rows(group[name], x))
        if all(seen[n] >= calls[n] for n in group):
            raise _GroupDone

    with _hooked(group, measure):
        for batch in batches:
            seen.update(dict.fromkeys(group, 0))
            with suppress(_GroupDone):
                forward(model, batch)
    for key, statistic in statistics.items():
        if all_reduce:
            statistic.all_reduce()
        if not statistic.is_finite():
            raise SlimkitError(f"the calibration inputs of {owners[key]} hold NaN or Inf, so its weights cannot be "
                               f"ranked by them; check the model's outputs on these batches")
    for name, module in group.items():
        prune(name, module, statistics[keys[name]])
