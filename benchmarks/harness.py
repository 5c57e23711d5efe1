"""Shared benchmark set-up: the allocator settings every latency measurement runs under (see
slimkit.environment.ensure_allocator_env)."""

from slimkit.environment import ALLOCATOR_ENV, ensure_allocator_env

__all__ = ["ALLOCATOR_ENV", "ensure_allocator_env"]
