"""What a zoo architecture asks of memory, known before anything is allocated. Each architecture field is
bounded alone (width <= 16, input_size <= 4096, ...), but their product is not: LeNet at width 16 on
4096 x 4096 inputs asks for 26.8 TB of weights. The model is built on the meta device (shapes only, no
memory) and run on one meta sample, so the estimate is exact for every zoo model and its options."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from slimkit.config import bundled_name
from slimkit.errors import first_line
from slimkit.models.config import ModelConfig
from slimkit.models.zoo import MODELS

MAX_MODEL_BYTES = 16 * 10**9  # parameters, buffers and one sample's activations, in fp32


def _bytes(tensors: list[Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def model_bytes(config: ModelConfig, in_channels: int, num_classes: int, input_size: int) -> tuple[int, int]:
    """(parameter and buffer bytes, activation bytes of one sample: every leaf module's output) of the zoo
    model `config` names, with these shape facts."""
    build = MODELS[bundled_name(config.name, config.factory, "model")]
    with torch.device("meta"):
        model = build(in_channels=in_channels, num_classes=num_classes, input_size=input_size, width=config.width,
                      **config.options)
    activations: list[Tensor] = []

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            activations.append(output)

    hooks = [m.register_forward_hook(record) for m in model.modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(1, in_channels, input_size, input_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return _bytes([*model.parameters(), *model.buffers()]), _bytes(activations)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def size_issue(config: ModelConfig, in_channels: int, num_classes: int, input_size: int) -> str | None:
    """Why this zoo model cannot be built (too large, naming its fields and what they ask for; or options its
    builder refuses), or None."""
    try:
        weights, activations = model_bytes(config, in_channels, num_classes, input_size)
    except (TypeError, ValueError, RuntimeError) as exc:
        return f"{config.name} cannot be built with options {config.options}: {first_line(exc)}"
    if weights + activations <= MAX_MODEL_BYTES:
        return None
    return (f"{config.name} with width {config.width:g}, in_channels {in_channels}, input_size {input_size} and "
            f"num_classes {num_classes} asks for about {_size(weights + activations)} ({_size(weights)} of "
            f"weights, {_size(activations)} of activations for one sample); slimkit builds models up to "
            f"{_size(MAX_MODEL_BYTES)}: lower width, input_size, in_channels or num_classes")
