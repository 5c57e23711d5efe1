"""Knowledge distillation: Hinton KD, graph-based relational KD and RKD as losses and a modifier."""

from slimkit.deprecation import deprecated_aliases
from slimkit.distill.losses import graph_kd, hinton_kd, knn_mask, rkd_distance, similarity_graph
from slimkit.distill.modifier import DistillConfig, DistillModifier, GraphKdConfig, HintonConfig, RkdConfig

__all__ = ["DistillConfig", "DistillModifier", "GraphKdConfig", "HintonConfig", "RkdConfig", "graph_kd", "hinton_kd",
           "knn_mask", "rkd_distance", "similarity_graph"]

# the names before <Name>Modifier became the one scheme (see docs/design.md, Modifiers)
__getattr__ = deprecated_aliases(__name__, {
    "Distiller": ("slimkit.distill", "DistillModifier"),
})
