"""Where training runs and in which precision: `train.device` resolved to a torch.device (each torchrun rank
on its own GPU, cuda:LOCAL_RANK), and `train.precision` as an autocast context. A setting the machine cannot
honour is an error naming the key, never a silent fall-back to the CPU or to fp32."""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from slimkit.errors import SlimkitError

Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "bf16"]


def resolve_device(device: Device, key: str = "train.device") -> torch.device:
    """The torch.device `device` names on this machine: `auto` is the GPU when torch sees one, else the CPU;
    a GPU is cuda:LOCAL_RANK, so that torchrun's ranks share a machine's GPUs one each."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise SlimkitError(f"'{key}': {device!r} needs a CUDA GPU, and torch {torch.__version__} ({build}) sees "
                           f"none; allowed on this machine: auto, cpu")
    index = int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise SlimkitError(f"'{key}': {device!r} on local rank {index} needs GPU {index}, and this machine has "
                           f"{torch.cuda.device_count()}; start at most that many processes per node")
    return torch.device("cuda", index)


def check_precision(precision: Precision, device: torch.device, key: str = "train.precision") -> None:
    """bf16 needs a device whose autocast computes in bfloat16: any CPU torch runs on, and GPUs from Ampere on
    (torch.cuda.is_bf16_supported)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SlimkitError(f"'{key}': 'bf16' needs bfloat16 support, and {device} "
                           f"({torch.cuda.get_device_name(device)}) has none; allowed on this device: fp32")


def autocast(precision: Precision, device: torch.device) -> torch.autocast:
    """The context a training forward and loss run under: bfloat16 autocast for `bf16` (weights, gradients and
    optimizer states stay fp32), a no-op for `fp32`."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def device_of(module: nn.Module) -> torch.device:
    """Where a model's weights are (its first parameter, else its first buffer; the CPU for neither), the device
    its batches and any tensor made for it belong on."""
    tensor = next(itertools.chain(module.parameters(), module.buffers()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def move_tensors(value: Any, device: torch.device) -> Any:
    """`value` with every tensor in it (nested in dicts, lists and tuples) on `device`: batches, and method states
    read from a checkpoint. Copies to a GPU run asynchronously (from pinned memory they overlap compute)."""
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=device.type != "cpu")
    if isinstance(value, Mapping):
        return {k: move_tensors(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        moved = [move_tensors(v, device) for v in value]
        return moved if isinstance(value, list) else tuple(moved)
    return value
