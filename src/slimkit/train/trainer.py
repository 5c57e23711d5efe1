"""The training loop every method shares. It knows modifiers only through their hooks.

Each epoch trains, evaluates on the validation split and writes an atomic checkpoint; a resumed run
continues bit for bit because every epoch re-seeds its randomness from (seed, epoch) and the learning
rate is a pure function of the step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import SGD, Adam, Optimizer
from torch.utils.data import DataLoader, DistributedSampler

from slimkit.data import ArrayDataset, DataBundle, collate_batch
from slimkit.errors import CheckpointError
from slimkit.recipe import TrainConfig
from slimkit.train import distributed
from slimkit.train.checkpoint import CHECKPOINT_FORMAT, WEIGHTS_FORMAT, atomic_save, safe_load
from slimkit.train.lr import LRSchedule
from slimkit.train.modifier import Modifier, TrainContext
from slimkit.train.progress import EpochProgress

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    seconds: float = 0.0
    summaries: list[dict[str, Any]] = field(default_factory=list)
    modifiers: list[Modifier] = field(default_factory=list)


def build_optimizer(model: nn.Module, config: TrainConfig, modifiers: Sequence[Modifier]) -> Optimizer:
    """One group per modifier claim (e.g. no weight decay on scores), the rest in the default group."""
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
        group.setdefault("weight_decay", config.weight_decay)
        group["base_lr"] = group.get("lr", config.lr)
    if config.optimizer == "sgd":
        return SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    return Adam(groups, lr=config.lr)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: ArrayDataset, batch_size: int = 512) -> tuple[float, float]:
    """(mean loss, accuracy) in eval mode; under DDP each rank takes a shard and the sums are reduced."""
    info = distributed.current()
    was_training = model.training
    model.eval()
    indices = list(range(info.rank, len(dataset), info.world_size))
    totals = torch.zeros(3, dtype=torch.float64)
    for i in range(0, len(indices), batch_size):
        x, y = dataset.__getitems__(indices[i: i + batch_size])
        out = model(x)
        totals += torch.tensor([nn.functional.cross_entropy(out, y, reduction="sum").item(),
                                (out.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
    distributed.all_reduce_sum(totals)
    model.train(was_training)
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def _clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Trainer:
    """Trains `model` on `data` under `config`, with `modifiers` applying a compression method."""

    def __init__(self, model: nn.Module, data: DataBundle, config: TrainConfig,
                 modifiers: Sequence[Modifier] = (), *, batch_size: int = 128, eval_batch_size: int = 512,
                 out_dir: Path | None = None, seed: int = 0, label: str = "train", progress: bool = True,
                 callbacks: Sequence[EpochCallback] = ()):
        self.model, self.data, self.config = model, data, config
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.modifiers = list(modifiers)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.seed, self.label, self.progress = seed, label, progress
        self.callbacks = list(callbacks)
        self.dist = distributed.current()

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoint.pt" if self.out_dir else None

    def _loader(self) -> tuple[DataLoader, DistributedSampler]:
        sampler = DistributedSampler(self.data.train, num_replicas=self.dist.world_size, rank=self.dist.rank,
                                     shuffle=True, seed=self.seed)
        loader = DataLoader(self.data.train, batch_size=self.batch_size, sampler=sampler, collate_fn=collate_batch)
        return loader, sampler

    def fit(self, resume: bool = False) -> TrainResult:
        """Train, keep the best complete epoch by validation accuracy, finalize and return the model."""
        started = time.perf_counter()
        loader, sampler = self._loader()
        ctx = TrainContext(self.model, self.config.epochs, len(loader), loader, self.dist)
        for modifier in self.modifiers:
            modifier.attach(self.model, ctx)
        schedule = LRSchedule(self.config, len(loader))

        history: list[dict[str, Any]] = []
        best: dict[str, Any] | None = None
        start_epoch = 0
        state = None
        if resume and self.checkpoint_path is not None and self.checkpoint_path.exists():
            state = safe_load(self.checkpoint_path, CHECKPOINT_FORMAT)
            if state["train_config"] != self.config.model_dump(mode="json"):
                raise CheckpointError(f"{self.checkpoint_path} was written under another train config; "
                                      f"resume with the same recipe, or start without --resume")
            for modifier, mod_state in zip(self.modifiers, state["modifiers"], strict=True):
                modifier.load_state_dict(mod_state)
                self.model = modifier.rebuild_structure(self.model)  # e.g. re-slice pruned channels
            self.model.load_state_dict(state["model"])
            history, best, start_epoch = state["history"], state["best"], state["epoch"] + 1
        optimizer = ctx.optimizer = build_optimizer(self.model, self.config, self.modifiers)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
        ctx.step = start_epoch * len(loader)

        net = self._wrap()
        criterion = nn.CrossEntropyLoss(label_smoothing=self.config.label_smoothing)
        for epoch in range(start_epoch, self.config.epochs):
            self._start_epoch(epoch, sampler, ctx)
            if ctx.structure_changed:  # parameters were replaced: a fresh optimiser (and DDP wrapper)
                optimizer = ctx.optimizer = build_optimizer(self.model, self.config, self.modifiers)
                net, ctx.structure_changed = self._wrap(), False
            record = self._run_epoch(net, epoch, loader, optimizer, schedule, criterion, ctx)
            record["complete"] = all(m.is_complete(epoch) for m in self.modifiers)
            history.append(record)
            score = record.get("val_acc", record["train_acc"])
            if record["complete"] and (best is None or score > best["score"]):
                best = {"epoch": epoch, "score": score, "model": _clone_state(self.model)}
            self._save(epoch, optimizer, history, best)
            for callback in self.callbacks:
                callback(record)

        if best is not None:
            self.model.load_state_dict(best["model"])
        self.model.eval()
        for modifier in self.modifiers:
            self.model = modifier.finalize(self.model)
        summaries = [m.summary() for m in self.modifiers]
        distributed.assert_ranks_agree(self.model)
        return TrainResult(self.model, history, best["epoch"] if best else None, time.perf_counter() - started,
                           summaries, self.modifiers)

    def _wrap(self) -> nn.Module:
        return DistributedDataParallel(self.model) if self.dist.enabled else self.model

    def _start_epoch(self, epoch: int, sampler: DistributedSampler, ctx: TrainContext) -> None:
        """Re-seed everything from (seed, epoch, rank), then let modifiers apply their epoch schedules."""
        torch.manual_seed(self.seed * 100_003 + epoch * 101 + self.dist.rank)
        sampler.set_epoch(epoch)
        self.data.train.set_epoch(epoch, self.dist.rank)
        ctx.epoch = epoch
        for modifier in self.modifiers:
            modifier.on_epoch_start(epoch, ctx)

    def _run_epoch(self, net: nn.Module, epoch: int, loader: DataLoader, optimizer: Optimizer,
                   schedule: LRSchedule, criterion: nn.Module, ctx: TrainContext) -> dict[str, Any]:
        net.train()
        bar = EpochProgress(self.label, epoch, self.config.epochs, len(loader), self.progress and self.dist.is_main)
        started = time.perf_counter()
        loss_sum, correct, seen, lr = 0.0, 0, 0, 0.0
        for x, y in loader:
            factor = schedule.factor(ctx.step)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor * group.get("lr_scale", 1.0)
            lr = optimizer.param_groups[0]["lr"]
            out = net(x)
            loss = criterion(out, y)
            for modifier in self.modifiers:
                extra = modifier.loss(out, (x, y), ctx)
                if extra is not None:
                    loss = loss + extra
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ctx.step += 1
            for modifier in self.modifiers:
                modifier.on_step_end(ctx.step, ctx)
            loss_sum += loss.item() * len(y)
            correct += (out.argmax(1) == y).sum().item()
            seen += len(y)
            bar.update(loss_sum / seen, correct / seen, lr)
        record = {"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                  "lr": lr, "seconds": time.perf_counter() - started}
        distributed.broadcast_buffers(self.model)  # every rank evaluates (and keeps) the same statistics
        summary = f"loss {record['train_loss']:.4f} train acc {record['train_acc']:.2%}"
        if self.data.val is not None:
            record["val_loss"], record["val_acc"] = evaluate(self.model, self.data.val, self.eval_batch_size)
            summary += f" val acc {record['val_acc']:.2%}"
        bar.close(f"{summary} lr {lr:.4g} ({record['seconds']:.1f}s)")
        return record

    def _save(self, epoch: int, optimizer: Optimizer, history: list[dict[str, Any]],
              best: dict[str, Any] | None) -> None:
        if self.out_dir is None or not self.dist.is_main:
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
        }, self.checkpoint_path)
