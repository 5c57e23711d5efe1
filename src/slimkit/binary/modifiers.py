"""Binarization methods as modifiers: each converts the selected layers to binary layers with its pair of
binarizers, drives its schedule once per epoch and may set its own parameter groups.

Epochs in the schedules count from the stage's start_epoch; E is the stage's length (end_epoch, or the
end of training, minus start_epoch).
"""

from __future__ import annotations

import math
from typing import Any, Literal, TypeVar

from pydantic import Field
from torch import Tensor, nn

from slimkit.binary.binarizers import (
    ActivationBinarizer,
    IrNetWeight,
    RbnnWeight,
    RecuWeight,
    SimanWeight,
    WeightBinarizer,
    XnorWeight,
)
from slimkit.binary.functions import ApproxSign, ClippedSTE, Ede, RbnnSign, Zero, log_schedule
from slimkit.binary.layers import BinaryConv2d, BinaryLinear, binarize_module
from slimkit.errors import SlimkitError
from slimkit.layers import LayerSelection, select_layers, selection_issues
from slimkit.methods import MethodConfig, register_method
from slimkit.train.modifier import Modifier, TrainContext


class BinarizeConfig(MethodConfig):
    """Shared by binarization methods: which layers become binary, whether activations do too, and the weight
    decay of the binary layers' parameters."""

    kind = "binarize"
    layers: LayerSelection = Field(default_factory=LayerSelection)
    binarize_activations: bool = True
    # the sign of 0 for activations: "zero" as the papers' code; "positive" (+1, as Larq) deploys with one
    # bit plane instead of two (see ActivationBinarizer)
    zero: Zero = "zero"
    binary_weight_decay: float | None = Field(
        None, ge=0, description="weight decay of every parameter of the binary layers (latent weight, bias, "
        "alpha, RBNN's theta); null: the train section's weight_decay, as for every other parameter")


B = TypeVar("B", bound=WeightBinarizer)


class BinarizeModifier(Modifier):
    """Base: converts layers in attach(), calls schedule(e, E) at each epoch start."""

    config: BinarizeConfig

    def __init__(self, config: BinarizeConfig):
        super().__init__(config)
        self.layers: dict[str, BinaryConv2d | BinaryLinear] = {}
        self.epochs = 1

    def weight_binarizer(self, weight: Tensor) -> WeightBinarizer:
        raise NotImplementedError

    def activation_binarizer(self) -> ActivationBinarizer:
        raise NotImplementedError

    def schedule(self, epoch: int, epochs: int) -> None:
        """Set this epoch's schedule values (temperatures, clamp quantiles, percentiles)."""

    def weight_binarizers(self, kind: type[B]) -> dict[str, B]:
        """Each binary layer's weight binarizer, which this method's `weight_binarizer` built as a `kind`."""
        found = {}
        for name, layer in self.layers.items():
            if not isinstance(layer.weight_binarizer, kind):
                raise SlimkitError(f"{name} binarizes its weight with {type(layer.weight_binarizer).__name__}, "
                                   f"not the {kind.__name__} that {self.name} schedules")
            found[name] = layer.weight_binarizer
        return found

    def rebuild_structure(self, model: nn.Module) -> nn.Module:
        for name, module in select_layers(model, self.config.layers).items():
            if isinstance(module, BinaryConv2d | BinaryLinear):  # already converted: rebuilding is idempotent
                self.layers[name] = module
                continue
            ab = self.activation_binarizer() if self.config.binarize_activations else nn.Identity()
            if isinstance(ab, ActivationBinarizer):
                ab.zero = self.config.zero
            binary = binarize_module(module, self.weight_binarizer, ab)
            model.set_submodule(name, binary)
            self.layers[name] = binary
        return model

    def check(self, model: nn.Module) -> list[str]:
        return selection_issues(model, self.config.layers, "layers")

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        self.rebuild_structure(model)
        end = self.config.end_epoch if self.config.end_epoch is not None else ctx.epochs
        self.epochs = max(1, end - self.config.start_epoch)
        self.schedule(0, self.epochs)

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        self.schedule(min(max(epoch - self.config.start_epoch, 0), self.epochs), self.epochs)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """The binary layers' parameters in a group of their own when `binary_weight_decay` is set."""
        if self.config.binary_weight_decay is None:
            return []
        params = [p for layer in self.layers.values() for p in layer.parameters() if p.requires_grad]
        return [{"params": params, "weight_decay": self.config.binary_weight_decay}]

    def summary(self) -> dict[str, Any]:
        return {"method": self.name, "binary_layers": list(self.layers),
                "binary_activations": self.config.binarize_activations}


class XnorConfig(BinarizeConfig):
    """XNOR-Net: alpha * sign(W), sign(x), straight-through gradients clipped at |x| <= 1.

    B_w = alpha_c sign(W_c), alpha_c = ||W_c||_1 / n: the least-squares binary approximation of each filter, so
    a conv becomes XNOR + popcount times one scale.

    References:
        Rastegari, Ordonez, Redmon & Farhadi, "XNOR-Net: ImageNet Classification Using Binary Convolutional
        Neural Networks", ECCV 2016, arXiv:1603.05279.
    """

    method: Literal["xnor"] = "xnor"


@register_method(XnorConfig)
class XnorModifier(BinarizeModifier):
    def weight_binarizer(self, weight: Tensor) -> WeightBinarizer:
        return XnorWeight()

    def activation_binarizer(self) -> ActivationBinarizer:
        return ActivationBinarizer(ClippedSTE(1.0))


class IrNetConfig(BinarizeConfig):
    """IR-Net: standardised weights with a power-of-two scale; EDE gradients on a log t schedule.

    What = (W - mean_c) / std_c, B_w = sign(What) * 2^round(log2 mean|What_c|): balanced signs carry the most
    information. EDE backward k t (1 - tanh^2(t x)), k = max(1/t, 1), t rising from t_min to t_max, moves the
    gradient from identity-like (weights update freely) to sign-like (accurate).

    References:
        Qin et al., "Forward and Backward Information Retention for Accurate Binary Neural Networks", CVPR 2020,
        arXiv:1909.10788.
    """

    method: Literal["irnet"] = "irnet"
    t_min: float = Field(1e-3, gt=0)
    t_max: float = Field(10.0, gt=0)


@register_method(IrNetConfig)
class IrNetModifier(BinarizeModifier):
    config: IrNetConfig

    def __init__(self, config: IrNetConfig):
        super().__init__(config)
        self.surrogate = Ede()

    def weight_binarizer(self, weight: Tensor) -> WeightBinarizer:
        return IrNetWeight(self.surrogate)

    def activation_binarizer(self) -> ActivationBinarizer:
        return ActivationBinarizer(self.surrogate)

    def schedule(self, epoch: int, epochs: int) -> None:
        self.surrogate.t, self.surrogate.k = log_schedule(epoch, epochs, self.config.t_min, self.config.t_max)


class RbnnConfig(BinarizeConfig):
    """RBNN: bi-rotation of weights, its sign approximation on a log t/k schedule, standardised inputs.

    Each standardised filter, reshaped to X_i (a x b), becomes R1^T X_i R2 with one orthogonal pair (R1, R2) per
    layer, updated at epoch starts to maximise sum_i ||R1^T X_i R2||_1; W_t = What + |sin theta| (rotated - What)
    and B_w = sign(W_t). Rotating w towards sign(w) cuts the angular error a scale alone cannot.

    theta starts at pi/2 per channel, as the official code does. In float32 sin(pi/2) is exactly 1, so the
    latent weights get no task gradient (dW_t/dWhat = 1 - |sin theta| = 0) while theta sits there, and theta's
    own gradient is scaled by cos theta (-4.4e-8 at pi/2). pi/2 is an unstable point: weight decay (SGD, 1e-4 on
    theta too, in the official recipe; lr * wd * pi/2 = 1.6e-5 at the first step) or a rounding step nudges theta
    off it, and then cos theta and theta's gradient, summed over each filter, grow together. Measured, not
    assumed: in the 20-epoch Fashion-MNIST runs (benchmarks/binary.py, 16 steps an epoch, a 2-step warm-up)
    theta stayed within 0.01 of pi/2 for 16 epochs and then moved by radians in the last four: some 250 steps
    after the warm-up had ended, once the sign surrogate had sharpened (its peak slope k * sqrt(2) * t grows
    once t passes 1, two thirds into the run). A short run may thus never train the latent weights, or
    train them with theta scattered. `init_theta` below pi/2 is a deviation that gives them a gradient of
    1 - sin(init_theta) from the first step; `summary()` reports each layer's mean |theta| at the end of
    training, so runs can be compared.

    References:
        Lin et al., "Rotated Binary Neural Network", NeurIPS 2020, arXiv:2009.13055; code github.com/lmbxmu/RBNN
        (cifar/modules/binarized_modules.py: theta = pi/2; cifar/main.py: SGD over all parameters).
    """

    method: Literal["rbnn"] = "rbnn"
    t_min: float = Field(1e-2, gt=0)
    t_max: float = Field(10.0, gt=0)
    rotate_every: int = Field(1, ge=1, description="epochs between rotation updates")
    init_theta: float = Field(math.pi / 2, ge=0, le=math.pi / 2,
                              description="initial theta in radians (pi/2 as the official code; lower is a deviation)")


@register_method(RbnnConfig)
class RbnnModifier(BinarizeModifier):
    config: RbnnConfig

    def __init__(self, config: RbnnConfig):
        super().__init__(config)
        self.weight_surrogate, self.input_surrogate = RbnnSign(), RbnnSign()

    def weight_binarizer(self, weight: Tensor) -> WeightBinarizer:
        return RbnnWeight(weight, self.weight_surrogate, self.config.init_theta)

    def activation_binarizer(self) -> ActivationBinarizer:
        return ActivationBinarizer(self.input_surrogate, normalize="standardize")

    def schedule(self, epoch: int, epochs: int) -> None:
        t, k = log_schedule(epoch, epochs, self.config.t_min, self.config.t_max)
        self.weight_surrogate.t, self.weight_surrogate.k = t, k
        self.input_surrogate.t, self.input_surrogate.k = max(t, 1.0), 1.0
        for binarizer in self.weight_binarizers(RbnnWeight).values():
            binarizer.rotate_next = epoch % self.config.rotate_every == 0

    def summary(self) -> dict[str, Any]:
        """Adds each binary layer's mean |theta| (it leaves init_theta only through training)."""
        theta = {name: binarizer.theta.detach().abs().mean().item()
                 for name, binarizer in self.weight_binarizers(RbnnWeight).items()}
        return super().summary() | {"init_theta": self.config.init_theta, "theta_mean_abs": theta}


def recu_tau(epoch: int, epochs: int, tau_min: float, tau_max: float) -> float:
    """tau(e) = A exp(e/E) + B with A = (tau_max - tau_min)/(e - 1), B = tau_min - A."""
    a = (tau_max - tau_min) / (math.e - 1)
    return a * math.exp(epoch / epochs) + tau_min - a


class RecuConfig(BinarizeConfig):
    """ReCU: clamps weights at a rising Laplace quantile tau; ApproxSign gradients on scaled inputs.

    B_w = sign(clamp(What, -Q_tau, Q_tau)), Q_tau = -mean|What| ln(2 - 2 tau) the tau-quantile of a Laplace,
    tau(e) = A exp(e/E) + B from tau_min to tau_max: the clamp revives "dead weights" that rarely change sign.

    References:
        Xu et al., "ReCU: Reviving the Dead Weights in Binary Neural Networks", ICCV 2021, arXiv:2103.12369.
    """

    method: Literal["recu"] = "recu"
    tau_min: float = Field(0.85, gt=0.5, lt=1)
    tau_max: float = Field(0.99, gt=0.5, lt=1)


@register_method(RecuConfig)
class RecuModifier(BinarizeModifier):
    config: RecuConfig

    def weight_binarizer(self, weight: Tensor) -> WeightBinarizer:
        return RecuWeight(weight)

    def activation_binarizer(self) -> ActivationBinarizer:
        return ActivationBinarizer(ApproxSign(), normalize="scale")

    def schedule(self, epoch: int, epochs: int) -> None:
        tau = recu_tau(epoch, epochs, self.config.tau_min, self.config.tau_max)
        for binarizer in self.weight_binarizers(RecuWeight).values():
            binarizer.tau.fill_(tau)


class SimanConfig(BinarizeConfig):
    """SiMaN: sign-to-magnitude coding with a shrinking percentile projection and no weight decay on the
    binarized weights and their scales. `weight_values: "01"` is the paper's {0, +1} form.

    B_c = 1[|What_c| > median |What_c|]: the {0, +1} code best aligned with w in angle, with half ones per channel
    (maximal bit entropy). The paper finds l2 drives latent weights to a Laplacian that defeats entropy
    maximisation, hence no weight decay on them.

    References:
        Lin et al., "SiMaN: Sign-to-Magnitude Network Binarization", IEEE TPAMI 2023, arXiv:2102.07981.
    """

    method: Literal["siman"] = "siman"
    percent_max: float = Field(15.0, ge=0, lt=50)
    weight_values: Literal["pm1", "01"] = "pm1"
    binary_weight_decay: float | None = Field(
        0.0, ge=0, description="weight decay of the binary layers' parameters: 0 is SiMaN's 'removing l2'")


@register_method(SimanConfig)
class SimanModifier(BinarizeModifier):
    config: SimanConfig

    def weight_binarizer(self, weight: Tensor) -> WeightBinarizer:
        return SimanWeight(weight, self.config.weight_values)

    def activation_binarizer(self) -> ActivationBinarizer:
        return ActivationBinarizer(ApproxSign(), normalize="standardize_eps")

    def schedule(self, epoch: int, epochs: int) -> None:
        for binarizer in self.weight_binarizers(SimanWeight).values():
            binarizer.percent.fill_(self.config.percent_max * (1 - epoch / epochs))
