"""Shared benchmark set-up: glibc allocator settings that keep conv buffers from being returned to the OS
and page-faulted back on every call (which makes conv timings 1.5-3x noisy and flatters pruning)."""

from __future__ import annotations

import os
import sys

ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def ensure_allocator_env() -> None:
    """Re-execute this script with the allocator settings if they are not in force (they only act at start)."""
    if any(os.environ.get(k) != v for k, v in ALLOCATOR_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ALLOCATOR_ENV})
