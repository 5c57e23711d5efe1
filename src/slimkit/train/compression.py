"""The loop-facing API: compression methods inside any training loop, the user's or slimkit's own Trainer.

Shaped like torch.ao.pruning (prepare, step, squash) and SparseML's manager (the optimizer's step drives the
schedule). A `Compression` attaches the modifiers, owns step and epoch counting, gives the optimizer the
methods' parameter groups (and applies their `lr_scale` around each step), keeps the optimizer valid when a
method replaces parameters, adds the methods' loss terms, and saves its own state for mid-training
checkpoints:

    compression = slimkit.prepare(model, "gmp-90", steps_per_epoch=len(loader), epochs=10)
    optimizer = compression.optimizer(torch.optim.SGD, lr=0.1, momentum=0.9)
    for epoch in range(10):
        for x, y in loader:
            loss = mse(model(x), y) + compression.loss(model(x), (x, y))
            optimizer.zero_grad(); loss.backward(); optimizer.step()   # the step advances the schedule
    model = compression.finalize()
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from slimkit.errors import SlimkitError
from slimkit.train import distributed
from slimkit.train.device import device_of, move_tensors
from slimkit.train.modifier import Modifier, TrainContext
from slimkit.train.objective import Objective, logits_of

STATE_FORMAT = "slimkit-compression-v1"


def param_groups(model: nn.Module, modifiers: Sequence[Modifier], **defaults: Any) -> list[dict[str, Any]]:
    """One group per modifier claim (e.g. no weight decay on scores), then every other trainable parameter
    in a default group first. `defaults` fill keys a group leaves open (weight_decay, say)."""
    claimed: dict[int, str] = {}
    groups: list[dict[str, Any]] = []
    for modifier in modifiers:
        for group in modifier.param_groups(model):
            params = list(group["params"])
            for p in params:
                if id(p) in claimed:
                    raise ValueError(f"a parameter is claimed by both {claimed[id(p)]} and {modifier.name}")
                claimed[id(p)] = modifier.name
            groups.append({**group, "params": params})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in claimed]
    if rest:
        groups.insert(0, {"params": rest})
    for group in groups:
        for key, value in defaults.items():
            group.setdefault(key, value)
    return groups


class Compression:
    """Compression methods attached to `model` for a run of `epochs` x `steps_per_epoch` optimizer steps.

    `data` (training batches, e.g. the user's DataLoader) serves the methods that score or calibrate on
    data (SNIP, GFBS/Taylor channels, QAT calibration, Sense rearrangement); `objective` says how batches
    feed the model and which loss their gradients come from. With `auto_epochs`, the step that ends an
    epoch starts the next one; the Trainer turns that off and calls `start_epoch` after it evaluates.
    `state` (a `state_dict()` of a checkpoint) is loaded right after the methods attach, and they attach
    knowing it comes (`TrainContext.restoring`): nothing is calibrated or scored on data that the state and
    the model's state_dict, loaded next, bring back anyway.
    """

    def __init__(self, model: nn.Module, modifiers: Sequence[Modifier], *, epochs: int, steps_per_epoch: int,
                 data: Iterable[Any] | None = None, objective: Objective | None = None, auto_epochs: bool = True,
                 state: dict[str, Any] | None = None):
        if epochs < 0 or steps_per_epoch < 1:
            raise SlimkitError(f"epochs must be >= 0 and steps_per_epoch >= 1; got epochs={epochs}, "
                               f"steps_per_epoch={steps_per_epoch}")
        self.model = model
        self.modifiers = list(modifiers)
        self.ctx = TrainContext(model, epochs, steps_per_epoch, data, distributed.current(),
                                objective=objective or Objective(), restoring=state is not None)
        self.auto_epochs = auto_epochs
        self.started_epoch: int | None = None
        self.structure_version = 0  # bumped whenever a method replaced parameters (the DDP wrapper is stale)
        self._optimizer: Optimizer | None = None
        self._hooks: list[Any] = []
        self._stepping = False
        self._names: dict[int, str] = {}
        self._replaced_by: list[str] = []  # methods that put new parameters in place of the model's at attach
        for modifier in self.modifiers:
            before = {id(p): p for p in model.parameters()}  # held, so no new tensor can take a freed one's id
            modifier.attach(model, self.ctx)
            if before.keys() - {id(p) for p in model.parameters()}:
                self._replaced_by.append(modifier.name)
        if state is not None:
            self.load_state_dict(state)
            self.ctx.restoring = False

    # --- the optimizer ------------------------------------------------------------------------------
    def param_groups(self, **defaults: Any) -> list[dict[str, Any]]:
        """The methods' parameter groups plus a default group, for an optimizer built by hand."""
        return param_groups(self.model, self.modifiers, **defaults)

    def optimizer(self, optimizer_class: type[Optimizer] = torch.optim.SGD, **defaults: Any) -> Optimizer:
        """Build `optimizer_class(groups, **defaults)` over the methods' groups and wrap it."""
        return self._drive(optimizer_class(self.param_groups(), **defaults))

    def wrap(self, optimizer: Optimizer) -> Optimizer:
        """Take over a user's optimizer: add the methods' parameter groups, check that it trains exactly the
        model's trainable parameters, and hook its step so that each step advances the schedule."""
        self._claim_groups(optimizer)
        return self._drive(optimizer)

    def _drive(self, optimizer: Optimizer) -> Optimizer:
        if self._optimizer is not None:
            raise SlimkitError("this Compression already drives an optimizer; wrap one optimizer per run")
        self._check_tracks_model(optimizer)
        self._optimizer = self.ctx.optimizer = optimizer
        self._remember_names()
        self._hooks = [optimizer.register_step_pre_hook(self._before_step),
                       optimizer.register_step_post_hook(self._after_step)]
        if self.auto_epochs:
            self.start_epoch(self.ctx.step // self.ctx.steps_per_epoch)
        return optimizer

    def _claim_groups(self, optimizer: Optimizer) -> None:
        """Move parameters the methods claim (e.g. OptG's scores) into their own groups."""
        for modifier in self.modifiers:
            for group in modifier.param_groups(self.model):
                params = list(group["params"])
                claimed = {id(p) for p in params}
                if any({id(p) for p in existing["params"]} == claimed for existing in optimizer.param_groups):
                    continue  # built from compression.param_groups(): the group is there already
                for existing in optimizer.param_groups:
                    existing["params"] = [p for p in existing["params"] if id(p) not in claimed]
                if params:
                    optimizer.add_param_group({**group, "params": params})
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]

    def _check_tracks_model(self, optimizer: Optimizer) -> None:
        live = {id(p): name for name, p in self.model.named_parameters() if p.requires_grad}
        tracked = {id(p) for group in optimizer.param_groups for p in group["params"]}
        stale = len(tracked - set(live))
        missing = [name for pid, name in live.items() if pid not in tracked]
        if stale:
            raise SlimkitError(f"the optimizer holds {stale} tensors the model no longer uses (it was built before "
                               f"slimkit.prepare replaced layers); build it after prepare, or use "
                               f"compression.optimizer(...)")
        if missing:
            raise SlimkitError(f"the optimizer does not train {len(missing)} trainable parameters of the model "
                               f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); add them, or set "
                               f"requires_grad=False on parameters meant to stay frozen")

    def _remember_names(self) -> None:
        self._names = {id(p): name for name, p in self.model.named_parameters()}

    def _before_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for group in optimizer.param_groups:
            if "lr_scale" in group:
                group["unscaled_lr"] = group["lr"]
                group["lr"] = group["lr"] * group["lr_scale"]

    def _after_step(self, optimizer: Optimizer, args: Any, kwargs: Any) -> None:
        for group in optimizer.param_groups:
            if "unscaled_lr" in group:
                group["lr"] = group.pop("unscaled_lr")
        self._stepping = True
        try:
            self.step()
        finally:
            self._stepping = False

    def _refresh_optimizer(self, changed_by: list[str]) -> None:
        """Point the optimizer at the parameters a method put in place of the old ones (by name), dropping
        the state of replaced tensors; groups and their settings stay as they were."""
        if self._optimizer is None:
            if self.ctx.step == 0:  # no optimizer yet: the one built next sees the new parameters
                return
            raise SlimkitError(f"{', '.join(changed_by)} replaced the model's parameters, so an optimizer built "
                               f"before can no longer be valid; build it with compression.optimizer(...) or pass "
                               f"it to compression.wrap(...) so it is kept up to date")
        current = dict(self.model.named_parameters())
        alive = {id(p) for p in current.values()}
        placed: set[int] = set()
        # each group in the model's order: a parametrized weight is registered after its module's other
        # parameters, and an optimizer built on resume lists them so, which its saved state's indices must match
        order = {id(p): i for i, p in enumerate(current.values())}
        for group in self._optimizer.param_groups:
            fresh = []
            for p in group["params"]:
                name = self._names.get(id(p))
                new = p if id(p) in alive else current.get(name) if name is not None else None  # moved, or replaced
                if new is None:
                    continue
                if new is not p:
                    self._optimizer.state.pop(p, None)
                fresh.append(new)
                placed.add(id(new))
            group["params"] = sorted(fresh, key=lambda p: order[id(p)])
        self._add_new_groups(placed)
        unplaced = [name for name, p in current.items() if p.requires_grad and id(p) not in placed]
        if unplaced:
            raise SlimkitError(f"{', '.join(changed_by)} added parameters the optimizer has no group for: "
                               f"{', '.join(unplaced[:4])}")
        self._remember_names()

    def _add_new_groups(self, placed: set[int]) -> None:
        """Give the parameters a method added mid-run (a quantize stage's steps at its start_epoch) the group
        that method declares for them (param_groups), with the optimizer's defaults for the rest; `placed`
        gains them."""
        assert self._optimizer is not None
        for modifier in self.modifiers:
            for group in modifier.param_groups(self.model):
                new = [p for p in group["params"] if id(p) not in placed]
                if new:
                    self._optimizer.add_param_group({**group, "params": new})
                    placed.update(id(p) for p in new)

    # --- the schedule ---------------------------------------------------------------------------------
    @property
    def step_count(self) -> int:
        return self.ctx.step

    @property
    def epoch(self) -> int:
        return self.ctx.epoch

    def start_epoch(self, epoch: int) -> None:
        """Run the methods' epoch-start hooks (schedules, one-shot pruning, channel rounds) once per epoch."""
        if self.started_epoch is not None and epoch <= self.started_epoch:
            if epoch == self.started_epoch:
                return
            raise SlimkitError(f"epoch {epoch} was started after epoch {self.started_epoch}; epochs only advance")
        self.started_epoch = self.ctx.epoch = epoch
        changed = []
        for modifier in self.modifiers:
            self.ctx.structure_changed = False
            modifier.on_epoch_start(epoch, self.ctx)
            if self.ctx.structure_changed:
                changed.append(modifier.name)
        self.ctx.structure_changed = False
        if changed:
            self.structure_version += 1
            self._refresh_optimizer(changed)

    def step(self) -> None:
        """After an optimizer step: count it, run the methods' step hooks, start the next epoch at the end of
        one. A wrapped optimizer calls this itself; call it by hand only with an unwrapped optimizer."""
        if self._optimizer is not None and not self._stepping:
            raise SlimkitError("the wrapped optimizer already advances the schedule at each optimizer.step(); "
                               "do not call compression.step() as well")
        if self._optimizer is None:
            claims = [m.name for m in self.modifiers if m.param_groups(self.model)]
            if claims:
                raise SlimkitError(f"{', '.join(claims)} train parameters in groups of their own (e.g. scores "
                                   f"without weight decay, a learning-rate scale); build the optimizer with "
                                   f"compression.optimizer(...) or pass it to compression.wrap(...)")
            if self._replaced_by:  # an optimizer built before prepare trains the old tensors, and nothing says so
                raise SlimkitError(f"{', '.join(self._replaced_by)} replaced the model's parameters in "
                                   f"slimkit.prepare, and an optimizer slimkit has not seen may still hold the old "
                                   f"ones; build it with compression.optimizer(...) or pass it to "
                                   f"compression.wrap(...), which checks that it trains the new ones")
            if self.started_epoch is None:
                self.start_epoch(0)
        self.ctx.step += 1
        for modifier in self.modifiers:
            modifier.on_step_end(self.ctx.step, self.ctx)
        if self.auto_epochs and self.ctx.step % self.ctx.steps_per_epoch == 0:
            self.start_epoch(self.ctx.step // self.ctx.steps_per_epoch)

    def loss(self, outputs: Any, batch: Any) -> Tensor:
        """The methods' extra loss terms (distillation, penalties) on this batch; add it to your loss."""
        logits = logits_of(outputs)
        total: Tensor | None = None
        for modifier in self.modifiers:
            extra = modifier.loss(logits, batch, self.ctx)
            if extra is not None:
                total = extra if total is None else total + extra
        return total if total is not None else torch.zeros((), dtype=logits.dtype, device=logits.device)

    # --- the end ----------------------------------------------------------------------------------------
    def is_complete(self, epoch: int) -> bool:
        """Whether every method holds its final form after `epoch` (only such epochs may count as best)."""
        return all(m.is_complete(epoch) for m in self.modifiers)

    def finalize(self) -> nn.Module:
        """Make every change permanent (squash masks, slice channels), release the optimizer and return the
        model in eval mode."""
        self.model.eval()
        for modifier in self.modifiers:
            self.model = modifier.finalize(self.model)
        self.ctx.model = self.model
        for hook in self._hooks:
            hook.remove()
        self._hooks, self._optimizer = [], None
        return self.model

    def summaries(self) -> list[dict[str, Any]]:
        return [m.summary() for m in self.modifiers]

    # --- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Step, epoch and every method's state (masks live in the model's own state_dict). Load it into a
        freshly prepared Compression *before* the model's state_dict: it re-creates pruned structure."""
        return {"format": STATE_FORMAT, "step": self.ctx.step, "started_epoch": self.started_epoch,
                "modifiers": [m.state_dict() for m in self.modifiers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        if found != STATE_FORMAT:
            raise SlimkitError(f"not a {STATE_FORMAT} state (found {found!r})")
        if len(state["modifiers"]) != len(self.modifiers):
            raise SlimkitError(f"the state holds {len(state['modifiers'])} methods and this Compression "
                               f"{len(self.modifiers)}; prepare it with the same recipe")
        self.load_modifier_states(state["modifiers"])
        self.ctx.step = int(state["step"])
        self.started_epoch = state["started_epoch"]
        if self.started_epoch is not None:
            self.ctx.epoch = int(self.started_epoch)
        if self._optimizer is not None:
            self._remember_names()

    def load_modifier_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Restore each method's state and the module structure it implies (sliced channels, say). Tensors in
        the states go to the model's device: a checkpoint loads on the CPU, whichever device wrote it."""
        device = device_of(self.model)
        for modifier, state in zip(self.modifiers, states, strict=True):
            modifier.load_state_dict(move_tensors(state, device))
            self.model = modifier.rebuild_structure(self.model)
        self.ctx.model = self.model
