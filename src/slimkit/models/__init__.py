"""Models: the zoo (every builder takes in_channels, num_classes, input_size and width, so each model runs
on 1x8x8 digits, 1x28x28 (Fashion-)MNIST and 3x32x32 CIFAR alike) and users' own models by import path."""

from __future__ import annotations

from torch import nn

from slimkit.config import bundled_name, resolve_factory
from slimkit.errors import SlimkitError
from slimkit.models.config import ModelConfig
from slimkit.models.lenet import lenet
from slimkit.models.mlp import mlp
from slimkit.models.resnet import resnet18, resnet20, resnet32, resnet56
from slimkit.models.size import size_issue
from slimkit.models.vgg import vgg_small
from slimkit.models.zoo import MODELS


def build_model(config: ModelConfig, in_channels: int | None = None, num_classes: int | None = None,
                input_size: int | None = None) -> nn.Module:
    """Build the configured model. For a zoo model, explicit values in `config` win over the data's shape."""
    if config.factory is not None:
        model = resolve_factory(config.factory, "model.factory")(**config.kwargs)
        if not isinstance(model, nn.Module):
            raise SlimkitError(f"model.factory {config.factory!r} returned {type(model).__name__}, not a "
                               f"torch.nn.Module")
        return model
    facts = {"in_channels": config.in_channels or in_channels, "num_classes": config.num_classes or num_classes,
             "input_size": config.input_size or input_size}
    missing = [k for k, v in facts.items() if v is None]
    if missing:
        raise SlimkitError(f"model {config.name!r} needs {', '.join(f'model.{k}' for k in missing)}: the data "
                           f"does not say (it has no class names or is not images)")
    known = {k: v for k, v in facts.items() if v is not None}  # every fact, as none is missing
    issue = size_issue(config, **known)  # each field is bounded, their product only here, before allocating
    if issue is not None:
        raise SlimkitError(f"model: {issue}")
    return MODELS[bundled_name(config.name, config.factory, "model")](**known, width=config.width, **config.options)


__all__ = ["MODELS", "ModelConfig", "build_model", "lenet", "mlp", "resnet18", "resnet20", "resnet32", "resnet56",
           "vgg_small"]
