"""Quantization as a modifier: QAT (train with fake quantization) and PTQ (the same stage with
train.epochs: 0: calibrate on a few batches, no training).

The stage starts at `start_epoch`: before it the quantizers wait inactive and the layers train in float (prune,
then fine-tune, then quantize); at it they are calibrated on the weights and inputs of that moment. A
`start_epoch` equal to `train.epochs` quantizes after training, on the kept weights: PTQ in the same run.

Layers the selection leaves out (by default the first conv and the last linear) are quantized to
`first_last_bits` with the uniform quantizer, or left in float when that is null.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, field_validator
from torch import Tensor, nn

from slimkit.errors import SlimkitError, UnsupportedLayerError
from slimkit.layers import LayerSelection, canonical_weight, check_untied, layer_kind, layer_tensor, select_layers
from slimkit.methods import MethodConfig, register_method
from slimkit.quant.attach import (
    input_quantizer_of,
    quantization_of,
    quantize_layer,
    quantizer_parameters,
    weight_quantization,
)
from slimkit.quant.levels import apot_levels, sp2_levels
from slimkit.quant.quantizers import LevelQuantizer, Observer, UniformQuantizer, activation_sample
from slimkit.train import distributed
from slimkit.train.modifier import Modifier, TrainContext


class QuantizeConfig(MethodConfig):
    """Shared by quantization methods: bit width, which layers, and calibration."""

    kind = "quantize"
    bits: int = Field(8, ge=2, le=8)
    first_last_bits: int | None = Field(8, ge=2, le=8)
    layers: LayerSelection = Field(default_factory=LayerSelection)
    calibration_batches: int = Field(4, ge=0)
    observer: Observer = "mse"
    percentile: float = Field(99.99, gt=50, le=100)

    @field_validator("end_epoch")
    @classmethod
    def _stays_to_the_end(cls, end_epoch: int | None) -> None:
        if end_epoch is not None:
            raise ValueError(f"{end_epoch}: quantization stays on from start_epoch to the end of training; "
                             f"remove end_epoch")


class UniformConfig(QuantizeConfig):
    """LSQ: per-channel weights, per-tensor activations, learned steps initialised by the observer.

    q = round(clamp(x / s, Q_n, Q_p)) * s, the step s learned through the straight-through estimator with its
    gradient scaled by 1/sqrt(N Q_p), so steps and weights learn at comparable rates.

    References:
        Esser, McKinstry, Bablani, Appuswamy & Modha, "Learned Step Size Quantization", ICLR 2020,
        arXiv:1902.08153.
    """

    method: Literal["uniform"] = "uniform"


class Sp2Config(QuantizeConfig):
    """Weights on the sign + sum-of-two-powers-of-two levels with a learnable clip (initialised to the clip with
    the least quantization error); LSQ activations.

    q = ±alpha (q1 + q2), q_i in {0, 2^-1, ..., 2^-(2^m_i - 1)}, m1 + m2 + 1 = bits: levels dense near 0, where
    Gaussian-like weights sit, and each product is two shifts and an add.

    References:
        Chang et al., "Mix and Match: A Novel FPGA-Centric Deep Neural Network Quantization Framework" (SP2 and
        mixed-scheme quantization, MSQ), HPCA 2021, arXiv:2012.04240.
    """

    method: Literal["sp2"] = "sp2"


class ApotConfig(QuantizeConfig):
    """APoT: standardised weights on ±APoT(bits - 1) levels (uniform at 2 bits), activations on APoT(bits)
    levels, learnable clips starting at 3.0 (weights) and 6.0 (activations).

    Levels are alpha * (p_1 + ... + p_n), one term from each additive power-of-two set (APoT(4):
    {0, 2^-1, 2^-3, 2^-5} + {0, 2^-2, 2^-4, 2^-6}, rescaled to max 1): non-uniform like powers of two but
    without their sparse tail near alpha, and each product is still a few shifts and adds.

    References:
        Li, Dong & Wang, "Additive Powers-of-Two Quantization: An Efficient Non-uniform Discretization for Neural
        Networks", ICLR 2020, arXiv:1909.13144.
    """

    method: Literal["apot"] = "apot"
    bits: int = Field(4, ge=2, le=5)


@register_method(UniformConfig, Sp2Config, ApotConfig)
class QuantizeModifier(Modifier):
    config: QuantizeConfig

    def __init__(self, config: QuantizeConfig):
        super().__init__(config)
        self.layers: dict[str, nn.Module] = {}
        self.active = True  # whether the quantizers act (False before start_epoch); a finished model's are on
        self._calibrating = False  # between putting the quantizers in and switching them on
        self.epochs = 0
        self.ctx: TrainContext | None = None

    # --- which quantizers --------------------------------------------------------------------------
    def quantizers(self, module: nn.Module, bits: int, uniform: bool) -> tuple[nn.Module, nn.Module]:
        channels = canonical_weight(module).shape[0]
        if uniform or self.config.method == "uniform":
            return UniformQuantizer(bits, channels, signed=True), UniformQuantizer(bits)
        if self.config.method == "sp2":
            alpha = layer_tensor(module).detach().abs().max().item()
            return LevelQuantizer(sp2_levels(bits), True, alpha, standardize=False), UniformQuantizer(bits)
        weight = (UniformQuantizer(bits, channels, signed=True) if bits == 2
                  else LevelQuantizer(apot_levels(bits - 1), True, 3.0, standardize=True))
        return weight, LevelQuantizer(apot_levels(bits), False, 6.0, standardize=False)

    def _plan(self, model: nn.Module) -> dict[str, tuple[int, bool]]:
        """name -> (bits, forced uniform) for every layer this stage quantizes."""
        chosen = select_layers(model, self.config.layers)
        plan = {name: (self.config.bits, False) for name in chosen}
        if self.config.first_last_bits is not None:
            extra = {name: module for name, module in model.named_modules()
                     if layer_kind(module) in self.config.layers.types and name not in chosen
                     and "parametrizations" not in name}
            check_untied(model, extra)
            plan.update({name: (self.config.first_last_bits, True) for name in extra})
        return plan

    # --- lifecycle ------------------------------------------------------------------------------------
    def rebuild_structure(self, model: nn.Module) -> nn.Module:
        """The quantizers in place, once the stage has started (active, or being calibrated); before that the
        layers stay plain."""
        if not (self.active or self._calibrating):
            return model
        for name, (bits, uniform) in self._plan(model).items():
            module = model.get_submodule(name)
            if weight_quantization(module) is None:
                with torch.device(layer_tensor(module).device):  # the quantizers' steps and levels beside it
                    weight_q, input_q = self.quantizers(module, bits, uniform)
                quantize_layer(module, weight_q, input_q, bits, bits)
            quantization_of(module, name).active = self.active
            self.layers[name] = module
        return model

    def check(self, model: nn.Module) -> list[str]:
        try:
            self._plan(model)
        except UnsupportedLayerError as exc:
            return [f"'layers': {exc}"]
        return []

    def attach(self, model: nn.Module, ctx: TrainContext) -> None:
        """A stage from epoch 0 puts its quantizers in now. A later one leaves the layers plain until its
        start_epoch, so stages before it can still reshape them (channel pruning slices plain convs only);
        a saved state that says the stage had started puts them back (load_state_dict)."""
        self.ctx, self.epochs = ctx, ctx.epochs
        self.active = self.config.start_epoch == 0
        if not self.active:
            return
        if ctx.restoring:  # the saved state and weights hold every step
            self.rebuild_structure(model)
        else:
            self._calibrate(model, ctx)

    def on_epoch_start(self, epoch: int, ctx: TrainContext) -> None:
        if not self.active and epoch >= self.config.start_epoch:
            self._calibrate(ctx.model, ctx)
            ctx.structure_changed = True  # new parameters (the steps) for the optimizer, a new graph for DDP

    def is_complete(self, epoch: int) -> bool:
        return self.config.start_epoch >= self.epochs or epoch >= self.config.start_epoch

    def finalize(self, model: nn.Module) -> nn.Module:
        if not self.active:  # start_epoch == train.epochs: post-training quantization of the kept weights
            if self.ctx is None:
                raise SlimkitError(f"{self.name} quantizes after training, which needs attach() first")
            self._calibrate(model, self.ctx)
        return model

    def _calibrate(self, model: nn.Module, ctx: TrainContext) -> None:
        """Set every step from the float layers' weights and a few batches of their inputs, then switch the
        quantizers on. A weight is calibrated as its quantizer will see it: after any pruning mask (the layer's
        weight while its quantizer is still off). Under DDP the steps are averaged over ranks, so every rank
        quantizes alike."""
        samples = self._collect_inputs(model, ctx) if self.config.calibration_batches else {}
        self.active, self._calibrating = False, True
        self.rebuild_structure(model)
        for name, module in self.layers.items():
            quantization, iq = quantization_of(module, name), input_quantizer_of(module)
            weight = canonical_weight(module).detach()
            if isinstance(quantization.quantizer, UniformQuantizer):
                quantization.quantizer.calibrate(weight, self.config.observer)
            elif self.config.method == "sp2" and isinstance(quantization.quantizer, LevelQuantizer):
                quantization.quantizer.calibrate(weight)
            if isinstance(iq, UniformQuantizer) and name in samples:
                iq.calibrate(samples[name], self.config.observer, self.config.percentile)
            if ctx.dist.enabled:
                with torch.no_grad():
                    for param in quantizer_parameters(module):
                        distributed.all_reduce_mean(param.data)
            quantization.active = True
        self.active, self._calibrating = True, False

    @torch.no_grad()
    def _collect_inputs(self, model: nn.Module, ctx: TrainContext) -> dict[str, Tensor]:
        """A sample of each layer's inputs over a few batches (float model, eval mode), plus the extremes."""
        batches = ctx.batches(self.config.calibration_batches, f"{self.name} calibration (calibration_batches: "
                                                               f"{self.config.calibration_batches})")
        names = self._plan(model)
        found: dict[str, list[Tensor]] = {name: [] for name in names}

        def hook(name: str):
            def record(module: nn.Module, args: tuple) -> None:
                found[name] += activation_sample(args[0])
            return record

        handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
        was_training = model.training
        model.eval()
        try:
            for batch in batches:
                ctx.objective.forward(model, batch)
        finally:
            model.train(was_training)
            for h in handles:
                h.remove()
        return {name: torch.cat(values) for name, values in found.items() if values}

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        params = [p for module in self.layers.values() for p in quantizer_parameters(module)]
        return [{"params": params, "weight_decay": 0.0}] if params else []

    def summary(self) -> dict[str, Any]:
        return {"method": self.name, "bits": self.config.bits, "first_last_bits": self.config.first_last_bits,
                "start_epoch": self.config.start_epoch, "quantized_layers": list(self.layers)}

    def state_dict(self) -> dict[str, Any]:
        return {"active": self.active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = bool(state["active"])  # rebuild_structure, which follows, puts the quantizers back if so
