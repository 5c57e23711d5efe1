"""Sparsity: masks, exact top-k selection, schedules, structure checkers and the pruning methods (trained,
and one-shot from calibration batches: Wanda, SparseGPT)."""

from slimkit.deprecation import deprecated_aliases
from slimkit.sparsity.balanced import SenseConfig, SenseModifier, balanced_mask, is_balanced
from slimkit.sparsity.learned import MovementConfig, MovementModifier, OptgConfig, OptgModifier
from slimkit.sparsity.magnitude import (
    GradualMagnitudeConfig,
    GradualMagnitudeModifier,
    MagnitudeConfig,
    MagnitudeModifier,
    SnipConfig,
    SnipModifier,
)
from slimkit.sparsity.masks import ScoredMask, WeightMask, add_mask, get_mask, masked_layers, remove_masks
from slimkit.sparsity.nm import NMConfig, NMModifier, is_nm, nm_mask
from slimkit.sparsity.oneshot import OneShotModifier
from slimkit.sparsity.pattern import PatternConfig, PatternModifier, is_pattern_valid
from slimkit.sparsity.pruner import PruneModifier
from slimkit.sparsity.sparsegpt import SparseGptConfig, SparseGptModifier
from slimkit.sparsity.wanda import WandaConfig, WandaModifier

__all__ = ["GradualMagnitudeConfig", "GradualMagnitudeModifier", "MagnitudeConfig", "MagnitudeModifier",
           "MovementConfig", "MovementModifier", "NMConfig", "NMModifier", "OneShotModifier", "OptgConfig",
           "OptgModifier", "PatternConfig", "PatternModifier", "PruneModifier", "ScoredMask", "SenseConfig",
           "SenseModifier", "SnipConfig", "SnipModifier", "SparseGptConfig", "SparseGptModifier", "WandaConfig",
           "WandaModifier", "WeightMask", "add_mask", "balanced_mask", "get_mask", "is_balanced",
           "is_nm", "is_pattern_valid", "masked_layers", "nm_mask", "remove_masks"]

# the names before <Name>Modifier became the one scheme (see docs/design.md, Modifiers)
__getattr__ = deprecated_aliases(__name__, {
    "Pruner": ("slimkit.sparsity", "PruneModifier"),
    "MagnitudePruner": ("slimkit.sparsity", "MagnitudeModifier"),
    "GradualPruner": ("slimkit.sparsity", "GradualMagnitudeModifier"),
    "SnipPruner": ("slimkit.sparsity", "SnipModifier"),
    "SensePruner": ("slimkit.sparsity", "SenseModifier"),
    "PatternPruner": ("slimkit.sparsity", "PatternModifier"),
    "NMPruner": ("slimkit.sparsity", "NMModifier"),
    "MovementPruner": ("slimkit.sparsity", "MovementModifier"),
    "OptgPruner": ("slimkit.sparsity", "OptgModifier"),
})
