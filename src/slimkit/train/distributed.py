"""DDP helpers: which rank we are, and collective ops that are no-ops in a single process."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from slimkit.train.device import Device, resolve_device


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


def backend_for(device: torch.device) -> str:
    """The process group's backend for training on `device`: on GPUs NCCL carries CUDA tensors (DDP's gradients,
    scores, buffer broadcasts) and gloo the few CPU ones (object gathers); on the CPU, gloo alone."""
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_from_env(device: Device = "auto") -> DistInfo:
    """Join the process group that torchrun describes in the environment, if any, for training on `device`
    (train.device): each rank on GPU LOCAL_RANK under NCCL, or on the CPU under gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        where = resolve_device(device)
        if where.type == "cuda":
            torch.cuda.set_device(where)
        dist.init_process_group(backend=backend_for(where))
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


def assert_ranks_agree(model: torch.nn.Module) -> str | None:
    """Fail loudly if ranks hold different weights or masks: every rank's sha256 digest of every tensor's
    bytes is compared with rank 0's (a sum would miss two swapped weights). Returns what was checked."""
    info = current()
    if not info.enabled:
        return None
    state = model.state_dict()
    local = {k: hashlib.sha256(t.detach().contiguous().cpu().numpy().tobytes()).hexdigest() for k, t in state.items()}
    gathered: list[dict[str, str] | None] = [None] * info.world_size
    dist.all_gather_object(gathered, local)
    hashes = [other for other in gathered if other is not None]
    if len(hashes) != len(gathered):
        raise RuntimeError(f"{len(gathered) - len(hashes)} ranks sent no tensor hashes")
    for rank, other in enumerate(hashes):
        bad = [k for k in local if other.get(k) != hashes[0].get(k)]
        if bad:
            raise RuntimeError(f"rank {rank} disagrees with rank 0 on {', '.join(bad[:5])}")
    return f"{info.world_size} ranks hold byte-identical tensors (sha256 of all {len(local)} in the state_dict)"


def finish() -> None:
    """End a distributed run cleanly: every rank waits at a barrier until rank 0's final writes are done, then
    the process group is torn down, so no rank's exit can kill another mid-write."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
