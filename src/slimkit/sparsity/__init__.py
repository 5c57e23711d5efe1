"""Sparsity: masks, exact top-k selection, schedules, structure checkers and the pruning methods."""

from slimkit.sparsity.balanced import SenseConfig, SensePruner, balanced_mask, is_balanced
from slimkit.sparsity.learned import MovementConfig, MovementPruner, OptgConfig, OptgPruner
from slimkit.sparsity.magnitude import (
    GradualMagnitudeConfig,
    GradualPruner,
    MagnitudeConfig,
    MagnitudePruner,
    SnipConfig,
    SnipPruner,
)
from slimkit.sparsity.masks import ScoredMask, WeightMask, add_mask, get_mask, masked_layers, remove_masks
from slimkit.sparsity.nm import NMConfig, NMPruner, is_nm, nm_mask
from slimkit.sparsity.pattern import PatternConfig, PatternPruner, is_pattern_valid
from slimkit.sparsity.pruner import Pruner

__all__ = ["GradualMagnitudeConfig", "GradualPruner", "MagnitudeConfig", "MagnitudePruner", "MovementConfig",
           "MovementPruner", "NMConfig", "NMPruner", "OptgConfig", "OptgPruner", "PatternConfig", "PatternPruner",
           "Pruner", "ScoredMask", "SenseConfig", "SensePruner", "SnipConfig", "SnipPruner", "WeightMask", "add_mask",
           "balanced_mask", "get_mask", "is_balanced", "is_nm", "is_pattern_valid", "masked_layers", "nm_mask",
           "remove_masks"]
