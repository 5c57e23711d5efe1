"""Knowledge distillation: Hinton KD, graph-based relational KD and RKD as losses and a modifier."""

from slimkit.distill.losses import graph_kd, hinton_kd, knn_mask, rkd_distance, similarity_graph
from slimkit.distill.modifier import Distiller

__all__ = ["Distiller", "graph_kd", "hinton_kd", "knn_mask", "rkd_distance", "similarity_graph"]
