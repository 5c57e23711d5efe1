"""Sparsity schedules: how the target sparsity rises over training."""

from __future__ import annotations


def cubic_sparsity(progress: float, initial: float, final: float) -> float:
    """Zhu & Gupta (2017): s = s_f + (s_i - s_f)(1 - progress)^3, with progress clamped to [0, 1]."""
    progress = min(max(progress, 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3
