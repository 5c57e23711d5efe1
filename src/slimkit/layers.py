"""Which layers a method touches, and how slimkit reads each layer type's weight.

Layer types are known through one small adapter registry: a type (or, for a library slimkit does not import,
its qualified class name) maps to its kind and to how its weight is laid out. Users register their own.
A selection never picks a layer whose weight is tied to another module's: changing one would silently
change both.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils import parametrize

from slimkit.config import StrictModel
from slimkit.errors import UnsupportedLayerError

LayerKind = Literal["conv", "linear"]


@dataclass(frozen=True)
class LayerAdapter:
    """How slimkit reads one layer type. `kind` decides which selections pick it. `transposed`: the weight
    is stored (in, out), as HF's Conv1D stores it, rather than torch's (out, in, ...). `linear_map`: the
    layer computes exactly `x @ W.T + b` with its canonical weight W on the last dimension of x, so a
    method may replace it by an equivalent module (binarization does); masks and quantizers only change
    the weight tensor and need no such promise."""

    kind: LayerKind
    transposed: bool = False
    linear_map: bool = False

    def canonical(self, weight: Tensor) -> Tensor:
        """The weight as (out, in, ...): the view every per-output or per-input rule works on."""
        return weight.t() if self.transposed else weight

    def stored(self, canonical: Tensor) -> Tensor:
        """The inverse of `canonical`: a canonical-shaped tensor in the layer's own layout."""
        return canonical.t() if self.transposed else canonical


_BY_TYPE: dict[type[nn.Module], LayerAdapter] = {
    nn.Conv2d: LayerAdapter("conv"),
    nn.Linear: LayerAdapter("linear", linear_map=True),
}
_BY_NAME: dict[str, LayerAdapter] = {  # libraries slimkit does not import
    "transformers.pytorch_utils.Conv1D": LayerAdapter("linear", transposed=True, linear_map=True),
}


def register_layer(layer_type: type[nn.Module] | str, adapter: LayerAdapter) -> None:
    """Teach slimkit a layer type (a class, or a 'module.QualName' string for a class it should not import).
    Its subclasses are covered too; registering a type again replaces its adapter."""
    if isinstance(layer_type, str):
        _BY_NAME[layer_type] = adapter
    else:
        _BY_TYPE[layer_type] = adapter


def adapter_of(module: nn.Module) -> LayerAdapter | None:
    """The adapter of `module`'s type or of its nearest registered base class; None for other modules."""
    for cls in type(module).__mro__:
        found = _BY_TYPE.get(cls) or _BY_NAME.get(f"{cls.__module__}.{cls.__qualname__}")
        if found is not None:
            return found
    return None


def known_adapter(module: nn.Module) -> LayerAdapter:
    """`adapter_of(module)` for a layer a method already selected: a layer of no known type is an error."""
    adapter = adapter_of(module)
    if adapter is None:
        raise UnsupportedLayerError(f"{type(module).__name__} is not a layer type slimkit knows; "
                                    f"slimkit.layers.register_layer teaches slimkit a layer type")
    return adapter


def layer_kind(module: nn.Module) -> LayerKind | None:
    adapter = adapter_of(module)
    return adapter.kind if adapter is not None else None


def layer_tensor(module: nn.Module, name: str = "weight") -> Tensor:
    """`module.<name>` as the tensor it is. nn.Module types an attribute it serves as `Tensor | Module`, so
    this is how slimkit reads a layer's weight: a layer whose weight is no tensor is refused by name."""
    value = getattr(module, name)
    if not isinstance(value, Tensor):
        raise UnsupportedLayerError(f"{type(module).__name__}.{name} is a {type(value).__name__}, not a tensor")
    return value


def layer_bias(module: nn.Module) -> Tensor | None:
    """`module.bias`: a tensor, or None for a layer built without one (an error when it is anything else)."""
    return None if module.bias is None else layer_tensor(module, "bias")


def parametrization_chains(module: nn.Module) -> dict[str, parametrize.ParametrizationList]:
    """Tensor name -> the parametrizations on it (torch.nn.utils.parametrize); empty when there are none."""
    if not parametrize.is_parametrized(module):
        return {}
    chains = module.parametrizations
    if not isinstance(chains, nn.ModuleDict):
        raise UnsupportedLayerError(f"{type(module).__name__}.parametrizations is not torch's ModuleDict")
    found = {}
    for name, chain in chains.items():
        if not isinstance(chain, parametrize.ParametrizationList):
            raise UnsupportedLayerError(f"{type(module).__name__}.parametrizations[{name!r}] is not torch's "
                                        f"ParametrizationList")
        found[name] = chain
    return found


def parametrization_chain(module: nn.Module, name: str = "weight") -> parametrize.ParametrizationList | None:
    """The parametrizations on `module.<name>`, or None when it has none."""
    return parametrization_chains(module).get(name)


def canonical_weight(module: nn.Module, weight: Tensor | None = None) -> Tensor:
    """`weight` (default: the module's) as (out, in, ...)."""
    adapter = adapter_of(module)
    weight = layer_tensor(module) if weight is None else weight
    return adapter.canonical(weight) if adapter is not None else weight


def conv_pair(value: tuple[int, ...]) -> tuple[int, int]:
    """A Conv2d's kernel size, stride, padding or dilation: torch stores each as a 2-tuple typed (int, ...)."""
    first, second = value
    return first, second


def resized_conv2d(layer: nn.Conv2d, in_channels: int, out_channels: int, *, groups: int,
                   bias: bool, dtype: torch.dtype | None = None) -> nn.Conv2d:
    """A new Conv2d with `layer`'s kernel, stride, padding, dilation and padding mode and the given sizes
    (and `dtype`; None: torch's default)."""
    padding = layer.padding if isinstance(layer.padding, str) else conv_pair(layer.padding)
    return nn.Conv2d(in_channels, out_channels, conv_pair(layer.kernel_size), stride=conv_pair(layer.stride),
                     padding=padding, dilation=conv_pair(layer.dilation), groups=groups, bias=bias,
                     padding_mode=layer.padding_mode, dtype=dtype)


def tied_owners(model: nn.Module) -> dict[int, list[str]]:
    """Parameter id -> every 'module.param' name that holds it, for parameters held more than once."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        if "parametrizations" in name.split("."):
            continue
        params: dict[str, Tensor | None] = dict(module._parameters)
        for key, chain in parametrization_chains(module).items():
            params[key] = chain.original
        for key, p in params.items():
            if p is not None:
                owners.setdefault(id(p), []).append(f"{name}.{key}" if name else key)
    return {pid: names for pid, names in owners.items() if len(names) > 1}


def _raw_weight(module: nn.Module) -> Tensor:
    chain = parametrization_chain(module)
    return chain.original if chain is not None else layer_tensor(module)


class LayerSelection(StrictModel):
    """Layers are chosen by type, then narrowed by fnmatch patterns on their module names."""

    types: list[LayerKind] = Field(default_factory=lambda: list[LayerKind](["conv", "linear"]))
    include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    skip_first_conv: bool = True
    skip_last_linear: bool = True


def select_layers(model: nn.Module, selection: LayerSelection) -> dict[str, nn.Module]:
    """Name -> module for every layer the selection picks, in model order.

    A name pattern that matches only layers of unsupported types is an error naming them, and so is a
    selection that picks nothing: a method silently doing nothing is the worst outcome.
    """
    named = [(n, m) for n, m in model.named_modules() if n and "parametrizations" not in n.split(".")]
    kinds = {n: layer_kind(m) for n, m in named}
    convs = [n for n, _ in named if kinds[n] == "conv"]
    linears = [n for n, _ in named if kinds[n] == "linear"]
    skipped = set()
    if selection.skip_first_conv and convs:
        skipped.add(convs[0])
    if selection.skip_last_linear and linears:
        skipped.add(linears[-1])

    def matches(name: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    for pattern in selection.include:
        hits = [(n, m) for n, m in named if fnmatch.fnmatchcase(n, pattern)]
        unsupported = [f"{n} ({type(m).__name__})" for n, m in hits if kinds[n] not in selection.types]
        if hits and len(unsupported) == len(hits):
            raise UnsupportedLayerError(
                f"layers.include pattern {pattern!r} matches only unsupported layers: {', '.join(unsupported[:5])}. "
                f"Selected kinds: {', '.join(selection.types)}; slimkit.layers.register_layer teaches slimkit a "
                f"layer type"
            )
    chosen = {
        n: m for n, m in named
        if kinds[n] in selection.types and n not in skipped
        and (not selection.include or matches(n, selection.include))
        and not matches(n, selection.exclude)
    }
    if not chosen:
        candidates = [n for n, _ in named if kinds[n] in selection.types]
        raise UnsupportedLayerError(
            f"the layer selection {selection.model_dump()} picks no layer of this model; "
            f"layers of the selected types: {', '.join(candidates) or 'none'}"
        )
    check_untied(model, chosen)
    return chosen


def check_untied(model: nn.Module, layers: dict[str, nn.Module]) -> None:
    """Refuse layers whose weight another module holds too, naming both owners."""
    tied = tied_owners(model)
    for name, module in layers.items():
        owners = tied.get(id(_raw_weight(module)))
        if owners:
            others = [o for o in owners if not o.startswith(f"{name}.")]
            raise UnsupportedLayerError(
                f"{name}.weight is the same tensor as {', '.join(others)} (tied weights): a change to one would "
                f"change both. Leave it out (layers.exclude: [{name!r}]) or untie the weights first")


def selection_issues(model: nn.Module, selection: LayerSelection, key: str) -> list[str]:
    """`select_layers`' refusal as a message under `key`, or nothing when the selection is fine."""
    try:
        select_layers(model, selection)
    except UnsupportedLayerError as exc:
        return [f"'{key}': {exc}"]
    return []
