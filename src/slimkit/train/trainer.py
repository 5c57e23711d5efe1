"""The training loop every method shares. It drives methods only through `Compression`, the same loop-facing
API a user's own loop calls, so there is one code path for hooks, parameter groups and checkpoints.

Each epoch trains, evaluates on the validation split and writes an atomic checkpoint; a resumed run
continues bit for bit because every epoch re-seeds its randomness from (seed, epoch) and the learning
rate is a pure function of the step. The model trains on `train.device`, under bfloat16 autocast with
`train.precision: bf16`; checkpoints hold CPU-loadable tensors whatever the device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import SGD, Adam, Optimizer
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from slimkit.config import describe_errors
from slimkit.data import DataBundle, make_loader
from slimkit.errors import CheckpointError, SlimkitError, first_line
from slimkit.formats import CHECKPOINT_FORMAT, WEIGHTS_FORMAT, atomic_save, read_checkpoint
from slimkit.train import distributed
from slimkit.train.compression import Compression, param_groups
from slimkit.train.config import TrainConfig
from slimkit.train.device import autocast, check_precision, device_of, resolve_device
from slimkit.train.lr import LRSchedule
from slimkit.train.modifier import Modifier
from slimkit.train.objective import Objective
from slimkit.train.progress import EpochProgress, console
from slimkit.value_checks import non_finite, optimizer_state_issue, optimizer_states

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    seconds: float = 0.0  # wall time of the training, a resumed run's earlier sessions counted by their epochs
    summaries: list[dict[str, Any]] = field(default_factory=list)
    modifiers: list[Modifier] = field(default_factory=list)


def build_optimizer(model: nn.Module, config: TrainConfig, modifiers: Sequence[Modifier]) -> Optimizer:
    """The recipe's optimizer over the methods' parameter groups (e.g. no weight decay on scores); each
    group's `base_lr` is what the schedule scales."""
    groups = param_groups(model, modifiers, weight_decay=config.weight_decay)
    for group in groups:
        group["base_lr"] = group.get("lr", config.lr)
    if config.optimizer == "sgd":
        return SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return Adam(groups, lr=config.lr)


class _Shard(Sampler[int]):
    """Indices rank, rank + world, ...: every sample is evaluated exactly once over all ranks."""

    def __init__(self, size: int, rank: int, world: int):
        self.indices = list(range(rank, size, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _eval_batches(data: Dataset | DataLoader, batch_size: int, num_workers: int, pin_memory: bool
                  ) -> tuple[Iterable[Any], bool]:
    """(batches, whether ranks hold different shards): a Dataset is sharded over ranks, a user's DataLoader
    is evaluated whole on every rank."""
    if isinstance(data, DataLoader):
        return data, False
    if not isinstance(data, Sized):
        raise SlimkitError("the evaluation data has no length, so it cannot be sharded; pass a map-style Dataset or "
                           "a DataLoader")
    info = distributed.current()
    sampler = _Shard(len(data), info.rank, info.world_size)
    # a generator of its own: evaluating must not draw from (and so shift) the global random stream
    return make_loader(data, batch_size, sampler, num_workers=num_workers, pin_memory=pin_memory,
                       generator=torch.Generator()), True


def _pinned(pin_memory: bool | Literal["auto"], device: torch.device) -> bool:
    """data.pin_memory resolved: `auto` pins batches when they go to a GPU."""
    return device.type == "cuda" if pin_memory == "auto" else pin_memory


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 512,
             objective: Objective | None = None, *, num_workers: int = 0,
             pin_memory: bool | Literal["auto"] = "auto") -> tuple[float, float | None]:
    """(mean loss, mean metric or None) in eval mode and fp32, averaged over samples, on the device the model
    is on; under DDP each rank takes a shard of a Dataset and the sums are reduced."""
    objective = objective or Objective()
    was_training = model.training
    model.eval()
    device = device_of(model)
    batches, sharded = _eval_batches(data, batch_size, num_workers, _pinned(pin_memory, device))
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, samples, metric total, metric count
    for batch in batches:
        batch = objective.to_device(batch, device)
        out = objective.forward(model, batch)
        target = objective.target(batch)
        n = objective.batch_size(batch)
        score = objective.score(out, target) or (0.0, 0.0)
        totals += torch.tensor([objective.loss(out, target).item() * n, n, *score], dtype=torch.float64)
    if sharded:
        distributed.all_reduce_sum(totals)
    model.train(was_training)
    if totals[1] == 0:
        raise SlimkitError("evaluation data is empty")
    metric = (totals[2] / totals[3].clamp_min(1)).item() if objective.metric is not None else None
    return (totals[0] / totals[1]).item(), metric


def _shown(name: str, value: float) -> str:
    return f"{value:.2%}" if name == "acc" else f"{value:.4g}"


def _clone_state(model: nn.Module) -> dict[str, Tensor]:
    """A copy of the model's state on the CPU: it costs no GPU memory and is saved as it loads anywhere."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class Trainer:
    """Trains `model` on `data` under `config`, with `modifiers` applying a compression method and
    `objective` (cross-entropy and accuracy on class ids by default) saying what is optimised. The model
    moves to `config.device` and stays there: `fit` returns it on that device. `num_workers` and `pin_memory`
    (data.num_workers, data.pin_memory) set how slimkit's loaders batch a Dataset."""

    def __init__(self, model: nn.Module, data: DataBundle, config: TrainConfig,
                 modifiers: Sequence[Modifier] = (), *, batch_size: int = 128, eval_batch_size: int = 512,
                 num_workers: int = 0, pin_memory: bool | Literal["auto"] = "auto",
                 out_dir: Path | None = None, seed: int = 0, label: str = "train", progress: bool = True,
                 callbacks: Sequence[EpochCallback] = (), objective: Objective | None = None,
                 recipe: str | None = None):
        self.model, self.data, self.config = model, data, config
        self.device = resolve_device(config.device)
        check_precision(config.precision, self.device)
        self.recipe = recipe  # the run's recipe (YAML), kept in every checkpoint: a resume's copy of record
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, _pinned(pin_memory, self.device)
        self.modifiers = list(modifiers)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.seed, self.label, self.progress = seed, label, progress
        self.callbacks = list(callbacks)
        self.objective = objective or Objective(label_smoothing=config.label_smoothing)
        self.dist = distributed.current()

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoint.pt" if self.out_dir else None

    def _loader(self) -> tuple[DataLoader, Any]:
        """The training loader and the sampler to re-seed each epoch (None for a user's own loader)."""
        train = self.data.train
        if isinstance(train, DataLoader):
            loader, sampler = train, getattr(train, "sampler", None)
        else:
            sampler = DistributedSampler(train, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                         shuffle=True, seed=self.seed)
            loader = make_loader(train, self.batch_size, sampler, num_workers=self.num_workers,
                                 pin_memory=self.pin_memory)
        try:
            steps = len(loader)
        except TypeError:
            raise SlimkitError("the training data has no length, so the schedule cannot count steps per epoch; "
                               "pass a map-style Dataset, or train in your own loop with slimkit.prepare") from None
        if steps == 0:
            raise SlimkitError("the training data yields no batch")
        return loader, sampler if hasattr(sampler, "set_epoch") else None

    def fit(self, resume: bool = False) -> TrainResult:
        """Train, keep the best complete epoch by the validation metric (or loss), finalize and return the
        model."""
        started = time.perf_counter()
        self.model.to(self.device)  # before the methods attach, so that what they create lands beside the weights
        loader, sampler = self._loader()
        compression = Compression(self.model, self.modifiers, epochs=self.config.epochs, steps_per_epoch=len(loader),
                                  data=loader, objective=self.objective, auto_epochs=False)
        schedule = LRSchedule(self.config, len(loader))

        history: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        start_epoch = 0
        state = None
        if resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            state = self._resume_state(compression)
            history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        optimizer = compression.wrap(build_optimizer(self.model, self.config, self.modifiers))
        if state is not None:
            self._load_optimizer_state(optimizer, state["optimizer"])
        compression.ctx.step = start_epoch * len(loader)

        net, version = self._wrap(), compression.structure_version
        for epoch in range(start_epoch, self.config.epochs):
            self._start_epoch(epoch, sampler, compression)
            if compression.structure_version != version:  # parameters were replaced: a fresh DDP wrapper
                net, version = self._wrap(), compression.structure_version
            record = self._run_epoch(net, epoch, loader, optimizer, schedule, compression, history)
            record["complete"] = compression.is_complete(epoch)
            history.append(record)
            key = self.objective.selects_by if "val_loss" in record else self.objective.selects_by.replace("val_",
                                                                                                           "train_")
            score = record[key]
            if record["complete"] and (best is None or self.objective.better(score, best["score"])):
                best = {"epoch": epoch, "score": score, "model": _clone_state(self.model)}
            self._save(epoch, optimizer, history, best)
            for callback in self.callbacks:
                callback(record)

        if best is not None:
            try:
                self.model.load_state_dict(best["model"])
            except RuntimeError as exc:
                if state is None:  # kept by this process: a bug, not a bad file
                    raise
                raise CheckpointError(f"{self.checkpoint_path}: field 'best.model' does not fit the model: "
                                      f"{first_line(exc)}") from None
        self.model = compression.finalize()
        agreed = distributed.assert_ranks_agree(self.model)
        if agreed and self.dist.is_main:  # under DDP only, one line per phase, also without progress output
            console.print(f"{self.label}: {agreed}", highlight=False)
        earlier = sum(r["seconds"] for r in history[:start_epoch])  # epochs a killed session already trained
        return TrainResult(self.model, history, best["epoch"] if best else None,
                           earlier + time.perf_counter() - started, compression.summaries(), self.modifiers)

    def _resume_state(self, compression: Compression) -> dict[str, Any]:
        """The checkpoint to continue from, schema-checked (`read_checkpoint`) and checked against this run:
        the same train config, one state per method, weights that fit the model its states rebuild."""
        path = self.checkpoint_path
        if path is None:
            raise SlimkitError("resuming needs the run folder that holds checkpoint.pt")
        state = read_checkpoint(path)
        try:
            saved_config = TrainConfig.model_validate(state["train_config"]).model_dump(mode="json")
        except ValidationError as exc:
            raise CheckpointError(f"{path}: " + "; ".join(describe_errors(exc, TrainConfig, ("train_config",)))
                                  ) from None
        if saved_config != self.config.model_dump(mode="json"):
            raise CheckpointError(f"{path} was written under another train config; resume with the same recipe, "
                                  f"or start without --resume")
        tensors = {**{f"model[{k!r}]": t for k, t in state["model"].items()},
                   **{f"best.model[{k!r}]": t for k, t in (state["best"] or {}).get("model", {}).items()},
                   **dict(optimizer_states(state["optimizer"]))}
        bad = non_finite(tensors)
        if bad:  # a diverged run's weights, or a changed file: resuming would train on NaN and report it
            raise CheckpointError(f"{path}: field '{bad[0]}' holds NaN or Inf values; resume from a copy of the "
                                  f"run from before, or start without --resume")
        if state["epoch"] >= self.config.epochs:
            raise CheckpointError(f"{path}: field 'epoch' is {state['epoch']}, beyond this run's "
                                  f"{self.config.epochs} epochs")
        if len(state["modifiers"]) != len(self.modifiers):
            raise CheckpointError(f"{path}: field 'modifiers' holds {len(state['modifiers'])} method states and "
                                  f"this run has {len(self.modifiers)} methods")
        try:
            compression.load_modifier_states(state["modifiers"])  # e.g. re-slice pruned channels
        except (KeyError, TypeError, ValueError, IndexError, SlimkitError) as exc:
            detail = f"a state lacks {exc}" if isinstance(exc, KeyError) else first_line(exc)
            raise CheckpointError(f"{path}: field 'modifiers' does not fit this run's methods: {detail}") from None
        self.model = compression.model
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: field 'model' does not fit the model: {first_line(exc)}") from None
        return state

    def _load_optimizer_state(self, optimizer: Optimizer, saved: dict[str, Any]) -> None:
        """Load a checkpoint's optimizer state, refusing one that does not fit this run's optimizer: torch checks
        the group and parameter counts, `optimizer_state_issue` every state tensor's shape."""
        try:
            optimizer.load_state_dict(saved)
            names: dict[Tensor, str] = {param: name for name, param in self.model.named_parameters()}
            issue = optimizer_state_issue(saved, optimizer, names)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            issue = f"field 'optimizer' does not fit this run's optimizer: {first_line(exc)}"
        if issue is not None:
            raise CheckpointError(f"{self.checkpoint_path}: {issue}")

    def _wrap(self) -> nn.Module:
        if not self.dist.enabled:
            return self.model
        return DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda" else None)

    def _start_epoch(self, epoch: int, sampler: Any, compression: Compression) -> None:
        """Re-seed everything from (seed, epoch, rank), then let the methods apply their epoch schedules."""
        torch.manual_seed(self.seed * 100_003 + epoch * 101 + self.dist.rank)
        if sampler is not None:
            sampler.set_epoch(epoch)
        train = self.data.train.dataset if isinstance(self.data.train, DataLoader) else self.data.train
        if hasattr(train, "set_epoch"):
            train.set_epoch(epoch, self.dist.rank)
        compression.start_epoch(epoch)
        self.model = compression.model

    def _run_epoch(self, net: nn.Module, epoch: int, loader: DataLoader, optimizer: Optimizer,
                   schedule: LRSchedule, compression: Compression, history: list[dict[str, Any]]
                   ) -> dict[str, Any]:
        net.train()
        bar = EpochProgress(self.label, epoch, self.config.epochs, len(loader), self.progress and self.dist.is_main)
        started = time.perf_counter()
        objective, name = self.objective, self.objective.metric.name if self.objective.metric else None
        loss_sum, seen, lr = 0.0, 0, 0.0
        skipped, skipped_before = 0, sum(r.get("skipped_batches", 0) for r in history)
        metric_sum, metric_count = 0.0, 0.0
        for batch in loader:
            factor = schedule.factor(compression.step_count)
            for group in optimizer.param_groups:  # a group a method added mid-run starts from its own lr
                group["lr"] = group.setdefault("base_lr", group["lr"]) * factor
            lr = optimizer.param_groups[0]["lr"] * optimizer.param_groups[0].get("lr_scale", 1.0)
            batch = objective.to_device(batch, self.device)
            target = objective.target(batch)
            with autocast(self.config.precision, self.device):
                out = objective.forward(net, batch)
                loss = objective.loss(out, target) + compression.loss(out, batch)
            optimizer.zero_grad(set_to_none=True)
            finite = self._finite(loss)
            if finite:
                loss.backward()
            else:
                skipped += 1
                self._on_non_finite(loss, epoch, compression.step_count + 1, skipped + skipped_before, len(loader))
            optimizer.step()  # the wrapped step advances compression; with no gradient it changes no weight
            if not finite:
                continue
            n = objective.batch_size(batch)
            loss_sum += loss.item() * n
            if name:
                with torch.no_grad():
                    total, count = objective.metric_score(out, target)
                metric_sum, metric_count = metric_sum + total, metric_count + count
            seen += n
            bar.update(loss_sum / seen, f" {name} {_shown(name, metric_sum / max(metric_count, 1))}" if name else "",
                       lr)
        record: dict[str, Any] = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "lr": lr,
                                  "seconds": time.perf_counter() - started}
        summary = f"loss {record['train_loss']:.4f}"
        if skipped:
            record["skipped_batches"] = skipped
            summary = f"{skipped} batches skipped (non-finite loss), {summary}"
        if name:
            record[f"train_{name}"] = metric_sum / max(metric_count, 1)
            summary += f" train {name} {_shown(name, record[f'train_{name}'])}"
        distributed.broadcast_buffers(self.model)  # every rank evaluates (and keeps) the same statistics
        if self.data.val is not None:
            record["val_loss"], val_metric = evaluate(self.model, self.data.val, self.eval_batch_size, objective,
                                                      num_workers=self.num_workers, pin_memory=self.pin_memory)
            summary += f" val loss {record['val_loss']:.4f}"
            if name and val_metric is not None:  # evaluate gives a metric exactly where the objective has one
                record[f"val_{name}"] = val_metric
                summary += f" val {name} {_shown(name, val_metric)}"
        bar.close(f"{summary} lr {lr:.4g} ({record['seconds']:.1f}s)")
        return record

    def _finite(self, loss: Tensor) -> bool:
        """Whether the loss is finite on every rank: under DDP the ranks agree, so that all of them skip the
        batch (or stop) together and none waits for another's gradients."""
        bad = (~torch.isfinite(loss.detach())).float().reshape(1)  # on the loss's device: NCCL reduces it there
        return distributed.all_reduce_sum(bad).item() == 0

    def _on_non_finite(self, loss: Tensor, epoch: int, step: int, skipped: int, steps_per_epoch: int) -> None:
        """train.nan_policy: `stop` ends the run here (the checkpoint keeps the last complete epoch); `skip`
        lets this batch go without an update, until as many batches as one epoch holds have gone."""
        kept = f"; {self.checkpoint_path} still holds the last complete epoch" if self.out_dir else ""
        shown = loss.item() if not torch.isfinite(loss) else "non-finite on another rank"
        where = f"{self.label}: the loss is {shown} at epoch {epoch + 1}, step {step}"
        if self.config.nan_policy == "stop":
            raise SlimkitError(f"{where}: training diverged{kept}. Lower train.lr, check the data and the model's "
                               f"weights for NaN or Inf, or set train.nan_policy: skip to skip such batches")
        if skipped >= steps_per_epoch:
            raise SlimkitError(f"{where}: {skipped} batches were skipped for a non-finite loss (train.nan_policy: "
                               f"skip), as many as one epoch holds, so training has diverged{kept}. Lower train.lr, "
                               f"or check the data and the model's weights for NaN or Inf")

    def _save(self, epoch: int, optimizer: Optimizer, history: list[dict[str, Any]],
              best: dict[str, Any] | None) -> None:
        path = self.checkpoint_path
        if self.out_dir is None or path is None or not self.dist.is_main:
            return
        if best is not None and best["epoch"] == epoch:
            atomic_save({"format": WEIGHTS_FORMAT, "epoch": epoch, "score": best["score"], "model": best["model"]},
                        self.out_dir / "best.pt")
        atomic_save({
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "train_config": self.config.model_dump(mode="json"),
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "modifiers": [m.state_dict() for m in self.modifiers],
            "history": history,
            "best": best,
            **({"recipe": self.recipe} if self.recipe is not None else {}),
        }, path)
