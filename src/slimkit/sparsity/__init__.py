"""Unstructured sparsity: masks, exact top-k selection, schedules and the pruning modifiers."""

from slimkit.sparsity.magnitude import GradualMagnitudeConfig, MagnitudeConfig, MagnitudePruner
from slimkit.sparsity.masks import WeightMask, add_mask, get_mask, masked_layers, remove_masks

__all__ = ["GradualMagnitudeConfig", "MagnitudeConfig", "MagnitudePruner", "WeightMask", "add_mask", "get_mask",
           "masked_layers", "remove_masks"]
