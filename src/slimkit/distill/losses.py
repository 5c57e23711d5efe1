"""Distillation losses: Hinton KD (arXiv:1503.02531), graph-based relational KD (Lassance et al.,
arXiv:1911.03080) and RKD distance (Park et al., arXiv:1904.05068); full references on the configs in
`slimkit.distill.modifier`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from slimkit.errors import SlimkitError


def hinton_kd(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0,
              class_dim: int | None = None) -> Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)) over `class_dim`, averaged over every distribution: per sample
    for (N, C) logits, per sample and position for token logits (N, T, V) with class_dim=-1. The T^2 keeps
    gradients comparable across T; the graph-KD repository's HKD baseline omits it (a deviation we do not
    copy). `class_dim` may be left out only for (N, C) logits: for more dimensions softmax over dim 1 would
    normalise over token positions, not classes, so another shape without it is an error."""
    if student_logits.shape != teacher_logits.shape:
        raise SlimkitError(f"Hinton KD compares logits of one shape; the student's are "
                           f"{tuple(student_logits.shape)} and the teacher's {tuple(teacher_logits.shape)}")
    if class_dim is None:
        if student_logits.ndim != 2:
            raise SlimkitError(f"Hinton KD on logits of shape {tuple(student_logits.shape)} needs class_dim (which "
                               f"dimension holds the classes, e.g. -1 for token logits (N, T, V)); only (N, C) "
                               f"logits have an evident one")
        class_dim = 1
    if not -student_logits.ndim <= class_dim < student_logits.ndim:
        raise SlimkitError(f"Hinton KD: class_dim {class_dim} is not a dimension of logits of shape "
                           f"{tuple(student_logits.shape)}")
    # at least float32, also under bf16 autocast: the KL is a small difference of log-probabilities, and in
    # bf16 (3 significant digits) it came out 10% off on a CNN's logits
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    log_p = F.log_softmax(student_logits.to(dtype) / temperature, dim=class_dim)
    log_q = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=class_dim)
    per_distribution = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(class_dim)
    return per_distribution.mean() * temperature**2


def similarity_graph(features: Tensor, eps: float = 1e-8) -> Tensor:
    """Â = D^-1/2 A D^-1/2 with A the cosine similarities of the rows of `features` (flattened per sample),
    diagonal 0. A sample with zero similarity to all others has degree 0; `eps` keeps its row at 0 instead
    of the code's inf/NaN (a documented deviation)."""
    x = F.normalize(features.reshape(features.shape[0], -1), dim=1)
    a = x @ x.T
    a = a - torch.diag_embed(torch.diagonal(a))
    inv_sqrt = torch.where(a.sum(1) > eps, a.sum(1).clamp_min(eps).rsqrt(), torch.zeros_like(a[0]))
    return inv_sqrt[:, None] * a * inv_sqrt[None, :]


def knn_mask(teacher_graph: Tensor, k: int) -> Tensor:
    """Each row's top-k of the teacher graph, symmetrised: min(1, M + M^T)."""
    index = teacher_graph.topk(k, dim=1).indices
    mask = torch.zeros_like(teacher_graph).scatter_(1, index, 1.0)
    return (mask + mask.T).clamp_max(1.0)


def graph_kd(student_features: list[Tensor], teacher_features: list[Tensor], labels: Tensor | None = None, *,
             k: int | None = None, class_mask: str = "none", power: int = 1) -> Tensor:
    """sum over taps and entries of (Â_T^p - Â_S^p)^2, divided by the number of taps (the code's /3).

    Optional: k-NN masks from the teacher graph, applied to both; class masks YY^T (intra) or 1 - YY^T (inter).
    Student and teacher widths may differ: only the B x B graphs are compared.
    """
    total = student_features[0].new_zeros(())
    for s, t in zip(student_features, teacher_features, strict=True):
        gs, gt = similarity_graph(s), similarity_graph(t.detach())
        if k is not None and k < gs.shape[0]:
            mask = knn_mask(gt, k)
            gs, gt = gs * mask, gt * mask
        if class_mask != "none" and labels is not None:
            same = (labels[:, None] == labels[None, :]).to(gs.dtype)
            mask = same if class_mask == "intra" else 1 - same
            gs, gt = gs * mask, gt * mask
        if power > 1:
            gs, gt = torch.linalg.matrix_power(gs, power), torch.linalg.matrix_power(gt, power)
        total = total + ((gt - gs) ** 2).sum()
    return total / len(student_features)


def rkd_distance(student_features: list[Tensor], teacher_features: list[Tensor]) -> Tensor:
    """RKD-D: pairwise distances divided by their mean positive value, smooth-L1, averaged over taps."""
    def normalised_distances(f: Tensor) -> Tensor:
        d = torch.cdist(f.reshape(f.shape[0], -1), f.reshape(f.shape[0], -1))
        return d / d[d > 0].mean().clamp_min(1e-12)

    losses = [F.smooth_l1_loss(normalised_distances(s), normalised_distances(t.detach()))
              for s, t in zip(student_features, teacher_features, strict=True)]
    return torch.stack(losses).mean()
