"""Pieces every zoo model shares: width scaling and the activation choice."""

from __future__ import annotations

from typing import Literal

from torch import nn

Activation = Literal["relu", "hardtanh", "prelu"]


def scaled(channels: int, width: float) -> int:
    """A width-scaled channel count, never below 1."""
    return max(1, round(channels * width))


def make_activation(name: Activation, channels: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "hardtanh":
        return nn.Hardtanh(inplace=True)
    if name == "prelu":
        return nn.PReLU(channels)
    raise ValueError(f"unknown activation {name!r}; allowed: relu, hardtanh, prelu")
