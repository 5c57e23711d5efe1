"""Structured channel pruning: a dependency graph from torch.fx, importance criteria, plans and surgery
that return a smaller ordinary model."""

from slimkit.channels.graph import ChannelGraph, UnsupportedOpError, build_graph
from slimkit.channels.modifier import BnScaleConfig, ChannelConfig, ChannelModifier, GfbsConfig, L1Config, TaylorConfig
from slimkit.channels.plan import ChannelPlan, apply_plan, make_plan, zero_channels
from slimkit.channels.prune import plan_pruning, prune_channels
from slimkit.channels.transformer import apply_transformer_plan, prune_heads_and_neurons
from slimkit.deprecation import deprecated_aliases

__all__ = [
           "BnScaleConfig",
           "ChannelConfig",
           "ChannelGraph",
           "ChannelModifier",
           "ChannelPlan",
           "GfbsConfig",
           "L1Config",
           "TaylorConfig",
           "UnsupportedOpError",
           "apply_plan",
           "apply_transformer_plan",
           "build_graph",
           "make_plan",
           "plan_pruning",
           "prune_channels",
           "prune_heads_and_neurons",
           "zero_channels",
]

# the names before <Name>Modifier became the one scheme (see docs/design.md, Modifiers)
__getattr__ = deprecated_aliases(__name__, {
    "ChannelPruner": ("slimkit.channels", "ChannelModifier"),
})
