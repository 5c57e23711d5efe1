"""The facts that make a run reproducible: versions, machine, threads, seed and command."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy
import torch

ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def ensure_allocator_env() -> None:
    """Re-execute this program with glibc allocator settings that keep conv buffers from being returned to the
    OS and page-faulted back on every call (which makes conv timings 1.5-3x noisy and flatters pruning).
    They only act at start, hence the re-exec; every latency measurement runs under them."""
    if any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_ENV})


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_vpopcntdq",
             "avx512_bitalg")


def cpu_info() -> dict[str, Any]:
    """The CPU model and the SIMD extensions that decide which int8 and popcount paths run (Linux x86;
    elsewhere the model from `platform` and no flags)."""
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"cpu_model": model, "isa": [f for f in ISA_FLAGS if f in flags]}


def has_int8_dot_product() -> bool:
    """Whether x86 int8 kernels get VNNI (vpdpbusd). Without it, engines such as onnxruntime multiply u8 by
    s8 with vpmaddubsw, whose int16 pair sums saturate, so their int8 results can differ from exact
    integer arithmetic."""
    return bool({"avx512_vnni", "avx_vnni"} & set(cpu_info()["isa"]))


def environment(seed: int) -> dict[str, Any]:
    from slimkit import __version__

    return {
        "slimkit": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        **cpu_info(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "seed": seed,
        "command": " ".join(sys.argv),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
