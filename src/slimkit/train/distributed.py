"""DDP helpers: which rank we are, and collective ops that are no-ops in a single process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env() -> DistInfo:
    """Join the process group that torchrun describes in the environment (gloo on CPU), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())


def current() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())
    return DistInfo()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (a no-op in one process); gradient scores go through this before top-k."""
    if current().enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average over ranks in place: scores from local batches become one ranking that every rank shares."""
    return all_reduce_sum(tensor).div_(current().world_size)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BN running statistics) to every rank. DDP syncs them only at the start of the
    next forward, so after an epoch's last step each rank still holds statistics from its own batch."""
    if current().enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def assert_ranks_agree(model: torch.nn.Module) -> None:
    """Fail loudly if ranks hold different weights or masks: a checksum of every tensor is compared."""
    info = current()
    if not info.enabled:
        return
    state = model.state_dict()
    local = torch.stack([t.detach().double().sum() for t in state.values()]) if state else torch.zeros(1)
    gathered = [torch.zeros_like(local) for _ in range(info.world_size)]
    dist.all_gather(gathered, local)
    for rank, other in enumerate(gathered):
        if not torch.equal(other, gathered[0]):
            bad = [k for k, a, b in zip(state, gathered[0], other, strict=True) if a != b]
            raise RuntimeError(f"rank {rank} disagrees with rank 0 on {', '.join(bad[:5])}")
