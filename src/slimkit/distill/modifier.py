"""Distillation as a modifier: a frozen teacher (a slimkit model.pt, loaded with weights_only) runs on each
training batch, and its logits or tapped features add a loss term to the student's cross-entropy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field, field_serializer
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from slimkit.distill.losses import graph_kd, hinton_kd, rkd_distance
from slimkit.errors import SlimkitError, UnsupportedLayerError
from slimkit.methods import MethodConfig, register_method
from slimkit.train.device import device_of
from slimkit.train.modifier import Modifier, TrainContext
from slimkit.train.objective import Objective, class_dim, logits_of


class DistillConfig(MethodConfig):
    """Shared by distillation methods: the teacher and the loss weight. The teacher is a slimkit model file
    (loaded with weights_only), or, from Python, any nn.Module: it runs in eval mode under no_grad on the
    student's batches, read the same way (tuple or dict batches, outputs with `.logits`), on the student's
    device (a user's module is moved there)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    kind = "distill"
    teacher: Path | nn.Module
    weight: float = Field(1.0, ge=0)

    @field_serializer("teacher")
    def _teacher_name(self, teacher: Path | nn.Module) -> str:
        return str(teacher) if isinstance(teacher, Path) else f"<in-memory {type(teacher).__name__}>"


class HintonConfig(DistillConfig):
    """Hinton KD on logits, with the T^2 factor.

    L = weight * T^2 * KL(softmax(t / T) || softmax(s / T)): the teacher's softened outputs carry how it ranks
    the wrong classes; T^2 keeps gradient magnitudes independent of T.

    References:
        Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531.
    """

    method: Literal["hinton"] = "hinton"
    temperature: float = Field(4.0, gt=0)
    class_dim: int | None = Field(None, description=(
        "the logits' class dimension (e.g. -1 for token logits (N, T, V)); null: dim 1 of (N, C) logits, and "
        "for more dimensions the one the batch's class-id target marks, as the default loss reads it (the last "
        "for (N, T, V) with labels (N, T)); an error when neither says"))


class FeatureDistillConfig(DistillConfig):
    """Methods on intermediate features: `taps` pairs a student module name with a teacher module name."""

    taps: list[tuple[str, str]] = Field(min_length=1)


class GraphKdConfig(FeatureDistillConfig):
    """Graph-based relational KD: compare cosine-similarity graphs of the batch at each tap.

    A = cosine similarities of the batch's features (diagonal 0), Â = D^-1/2 A D^-1/2;
    L = weight * sum over taps and entries of (Â_T^p - Â_S^p)^2 / taps. Only the B x B graphs are compared, so
    student and teacher widths may differ.

    References:
        Lassance et al., "Deep Geometric Knowledge Distillation with Graphs", ICASSP 2020, arXiv:1911.03080.
    """

    method: Literal["graph_kd"] = "graph_kd"
    k: int | None = Field(None, ge=1, description="k-NN graph from the teacher; null compares full graphs")
    class_mask: Literal["none", "intra", "inter"] = "none"
    power: int = Field(1, ge=1)


class RkdConfig(FeatureDistillConfig):
    """RKD distance: compare normalised pairwise distances at each tap.

    psi(i, j) = ||f_i - f_j|| / mean of the positive distances; L = weight * mean over taps of
    smooth-L1(psi_S, psi_T): the student keeps the teacher's geometry, not its coordinates.

    References:
        Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019, arXiv:1904.05068.
    """

    method: Literal["rkd"] = "rkd"


class _Taps:
    """Forward hooks that keep the latest output of named modules."""

    def __init__(self, model: nn.Module, names: list[str], role: str):
        self.outputs: dict[str, Tensor] = {}
        available = dict(model.named_modules())
        self.handles: list[RemovableHandle] = []
        for name in names:
            if name not in available:
                known = ", ".join(n for n in available if n)
                raise UnsupportedLayerError(f"distill tap: the {role} has no module '{name}'; it has: {known[:600]}")
            self.handles.append(available[name].register_forward_hook(self._keep(name)))

    def _keep(self, name: str) -> Callable[[nn.Module, tuple[Any, ...], Tensor], None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            self.outputs[name] = output
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _kd_class_dim(logits: Tensor, batch: Any, objective: Objective) -> int:
    """The class dimension of `logits` when the stage names none: dim 1 of (N, C), else the one the batch's
    class-id target fits (`objective.class_dim`, the default loss's reading). Never a guess: logits of
    (N, T, V) and (N, C, L) look alike, so without a target that tells them apart it is an error."""
    if logits.ndim == 2:
        return 1
    target = objective.split(batch)[2]
    ask = (f"Hinton KD on logits of shape {tuple(logits.shape)}: which dimension holds the classes is ambiguous "
           f"(dim 1 or the last)")
    try:
        dim = class_dim(logits, target) if target is not None else None
    except SlimkitError:
        dim = None
    if dim is None:
        raise SlimkitError(f"{ask}, and the batch has no class-id target that tells them apart; set class_dim in "
                           f"the distill stage (-1 for token logits (N, T, V))")
    return dim


@register_method(HintonConfig, GraphKdConfig, RkdConfig)
class DistillModifier(Modifier):
    config: DistillConfig

    def __init__(self, config: DistillConfig):
        super().__init__(config)
        self.teacher: nn.Module | None = None
        self._loaded: nn.Module | None = None
        self.student_taps: _Taps | None = None
        self.teacher_taps: _Taps | None = None

    def check(self, model: nn.Module) -> list[str]:
        teacher = self._teacher()  # a teacher file is read and schema-checked before anything trains
        if not isinstance(self.config, FeatureDistillConfig):
            return []
        issues = []
        for role, net, names in (("student", model, [s for s, _ in self.config.taps]),
                                 ("teacher", teacher, [t for _, t in self.config.taps])):
            available = dict(net.named_modules())
            issues += [f"'taps': the {role} has no module '{n}'" for n in names if n not in available]
        return issues

    def _teacher(self) -> nn.Module:
        """The teacher, a teacher file read (and schema-checked) once for both `check` and `attach`."""
        from slimkit.persistence import load

        if self._loaded is None:
            teacher = self.config.teacher
            self._loaded = teacher if isinstance(teacher, nn.Module) else load(teacher)
        return self._loaded

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        teacher = self.config.teacher
        self.teacher = self._teacher().eval().to(device_of(model))  # it reads the student's batches, where they are
        if not isinstance(teacher, nn.Module):  # a loaded teacher is ours to freeze; a user's module is left as is
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        if isinstance(self.config, FeatureDistillConfig):
            self.student_taps = _Taps(model, [s for s, _ in self.config.taps], "student")
            self.teacher_taps = _Taps(self.teacher, [t for _, t in self.config.taps], "teacher")

    def loss(self, outputs: Tensor, batch: Any, ctx: TrainContext | None) -> Tensor | None:
        if self.teacher is None:
            raise SlimkitError(f"{self.name} needs its teacher, which attach() loads, before its loss")
        objective = ctx.objective if ctx is not None else Objective()  # the teacher reads batches as the student
        with torch.no_grad():
            teacher_logits = logits_of(objective.forward(self.teacher, batch))
        c = self.config
        if isinstance(c, HintonConfig):
            dim = c.class_dim if c.class_dim is not None else _kd_class_dim(outputs, batch, objective)
            return c.weight * hinton_kd(outputs, teacher_logits, c.temperature, class_dim=dim)
        if not isinstance(c, FeatureDistillConfig) or self.student_taps is None or self.teacher_taps is None:
            raise SlimkitError(f"{self.name}: a {type(c).__name__} is neither logit distillation nor feature "
                               f"distillation with taps attached")
        student = [self.student_taps.outputs[s] for s, _ in c.taps]
        teacher = [self.teacher_taps.outputs[t] for _, t in c.taps]
        if isinstance(c, GraphKdConfig):
            labels = objective.target(batch) if c.class_mask != "none" else None
            return c.weight * graph_kd(student, teacher, labels, k=c.k, class_mask=c.class_mask, power=c.power)
        return c.weight * rkd_distance(student, teacher)

    def finalize(self, model: nn.Module) -> nn.Module:
        for taps in (self.student_taps, self.teacher_taps):
            if taps is not None:
                taps.remove()
        return model

    def summary(self) -> dict[str, Any]:
        return {"method": self.name, "teacher": str(self.config.teacher), "weight": self.config.weight}
