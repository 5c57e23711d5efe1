"""Knowledge distillation: Hinton KD, graph-based relational KD and RKD as losses and a modifier."""

from slimkit.distill.losses import graph_kd, hinton_kd, knn_mask, rkd_distance, similarity_graph
from slimkit.distill.modifier import DistillConfig, Distiller, GraphKdConfig, HintonConfig, RkdConfig

__all__ = ["DistillConfig", "Distiller", "GraphKdConfig", "HintonConfig", "RkdConfig", "graph_kd", "hinton_kd",
           "knn_mask", "rkd_distance", "similarity_graph"]
