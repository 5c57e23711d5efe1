"""Pruning plans: which channels of which layer are kept, and the surgery that applies them.

A plan is plain JSON: for each changed layer the kept indices relative to the original architecture. It is
produced from the dependency graph once, and applied by slicing alone, so loading a pruned model needs
the architecture, the plan and the state_dict, and no tracing.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.channel_rules import channel_rule
from slimkit.channels.graph import ChannelGraph, UnsupportedOpError
from slimkit.errors import CheckpointError, checked_field, first_line
from slimkit.files import atomic_write_text
from slimkit.layers import layer_bias, layer_tensor, resized_conv2d
from slimkit.train.device import device_of

PLAN_FILE = "plan.json"  # the name a channel stage exports its plan under, beside model.pt
_FIELDS = {"conv": ("out", "in"), "linear": ("out", "in"), "norm": ("keep",), "shortcut": ("pad",)}


@dataclass
class ChannelPlan:
    """Module name -> {"type": conv|linear|norm|shortcut, "out"/"in"/"keep": indices, "groups", "pad"}."""

    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    removed_groups: int = 0  # channel groups this plan removed, of candidate_groups that could be
    candidate_groups: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"modules": copy.deepcopy(self.modules)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: object = "the channel plan") -> ChannelPlan:
        """A plan from its plain form (plan.json, a checkpoint's or model file's stage state), schema-checked:
        a loaded plan is data from a file, and a wrong field is a CheckpointError naming `source` and it."""
        modules = checked_field(data, "modules", dict, source, values=dict)
        for name, entry in modules.items():
            where = f"modules[{name!r}]"
            kind = checked_field(entry, "type", str, source, where=where)
            if kind not in _FIELDS:
                raise CheckpointError(f"{source}: field '{where}.type' is {kind!r}, not one of {', '.join(_FIELDS)}")
            for key in _FIELDS[kind]:
                indices = checked_field(entry, key, list, source, where=where, values=int)
                if any(i < 0 for i in indices) or (key == "pad" and len(indices) != 2):
                    raise CheckpointError(f"{source}: field '{where}.{key}' must hold "
                                          f"{'two counts' if key == 'pad' else 'indices'} >= 0, not {indices}")
            if "groups" in entry and checked_field(entry, "groups", int, source, where=where) < 1:
                raise CheckpointError(f"{source}: field '{where}.groups' must be >= 1")
        return cls(copy.deepcopy(modules))

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> ChannelPlan:
        """Read a plan.json; a missing, unreadable or mis-shaped file is a CheckpointError naming it."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(f"{path} cannot be read as a channel plan: {first_line(exc)}") from None
        return cls.from_dict(data, source=path)

    def then(self, later: ChannelPlan) -> ChannelPlan:
        """This plan followed by `later` (whose indices refer to the already-pruned model)."""
        out = copy.deepcopy(self.modules)
        for name, entry in later.modules.items():
            base = out.get(name)
            merged = dict(entry)
            for key in ("out", "in", "keep"):
                if key in entry and base is not None and key in base:
                    merged[key] = [base[key][i] for i in entry[key]]
            out[name] = merged
        return ChannelPlan(out)


def _kept(graph: ChannelGraph, elements: list[int], removed: set[int]) -> list[int]:
    return [i for i, e in enumerate(elements) if graph.find(e) not in removed]


def make_plan(graph: ChannelGraph, removed: set[int], candidates: int = 0) -> ChannelPlan:
    """The plan that removes every component whose root is in `removed` (of `candidates` scored ones)."""
    plan = ChannelPlan(removed_groups=len(removed), candidate_groups=candidates)
    for name, out_elements in graph.producers.items():
        module = graph.modules[name]
        if type(module) not in (nn.Conv2d, nn.Linear):
            if any(graph.find(e) in removed for e in out_elements + graph.consumers[name]):
                raise UnsupportedOpError(f"cannot slice '{name}' ({type(module).__name__}): only plain Conv2d "
                                         f"and Linear layers can be pruned; exclude it")
            continue
        out = _kept(graph, out_elements, removed)
        inp = _kept(graph, graph.consumers[name], removed)
        if len(out) == len(out_elements) and len(inp) == len(graph.consumers[name]):
            continue
        entry: dict[str, Any] = {"type": "conv" if isinstance(module, nn.Conv2d) else "linear", "out": out, "in": inp}
        if isinstance(module, nn.Conv2d):
            entry["groups"] = module.groups * len(inp) // module.in_channels if module.groups > 1 else 1
        plan.modules[name] = entry
    for name, slots in graph.channel_users.items():
        keep = _kept(graph, slots, removed)
        if len(keep) != len(slots):
            plan.modules[name] = {"type": "norm", "keep": keep}
    for name, (slots, left, right) in graph.zero_pads.items():
        kept = {i for i in _kept(graph, slots, removed)}
        new_left = sum(1 for i in range(left) if i in kept)
        new_right = sum(1 for i in range(len(slots) - right, len(slots)) if i in kept)
        if (new_left, new_right) != (left, right):
            plan.modules[name] = {"type": "shortcut", "pad": [new_left, new_right]}
    return plan


def _index(t: torch.Tensor, dim: int, idx: list[int]) -> torch.Tensor:
    return t.index_select(dim, torch.as_tensor(idx, dtype=torch.long, device=t.device)).clone()


Layer = nn.Conv2d | nn.Linear
Norm = nn.BatchNorm1d | nn.BatchNorm2d | nn.PReLU


def _sliced_layer(module: Layer, entry: dict[str, Any]) -> Layer:
    out, inp = entry["out"], entry["in"]
    bias = module.bias
    dtype = module.weight.dtype  # the smaller layer holds the dtype of the old one: a float64 model stays float64
    new: Layer
    if isinstance(module, nn.Conv2d):
        new = resized_conv2d(module, len(inp), len(out), groups=entry.get("groups", 1), bias=bias is not None,
                             dtype=dtype)
        weight = _index(module.weight.data, 0, out)
        new.weight.data.copy_(weight if module.groups > 1 else _index(weight, 1, inp))
    else:
        new = nn.Linear(len(inp), len(out), bias=bias is not None, dtype=dtype)
        new.weight.data.copy_(_index(_index(module.weight.data, 0, out), 1, inp))
    if bias is not None and new.bias is not None:
        new.bias.data.copy_(_index(bias.data, 0, out))
    return new.train(module.training)


def _dtype_of(module: nn.Module) -> torch.dtype:
    """The floating dtype of a norm layer's parameters and statistics (BN without affine has only buffers;
    one with neither holds no value, and takes the default)."""
    floats = [t.dtype for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
    return floats[0] if floats else torch.get_default_dtype()


def _sliced_norm(module: Norm, keep: list[int]) -> Norm:
    dtype = _dtype_of(module)
    if isinstance(module, nn.PReLU):
        prelu = nn.PReLU(len(keep), dtype=dtype)
        prelu.weight.data.copy_(_index(module.weight.data, 0, keep))
        return prelu
    new = type(module)(len(keep), eps=module.eps, momentum=module.momentum, affine=module.affine,
                       track_running_stats=module.track_running_stats, dtype=dtype)
    for key, value in module.state_dict().items():
        target = new.state_dict()[key]
        target.copy_(value if value.ndim == 0 else _index(value, 0, keep))
    return new.train(module.training)


def _current_size(module: Layer | Norm) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.PReLU):
        return module.num_parameters
    return module.num_features


def apply_plan(model: nn.Module, plan: ChannelPlan | dict[str, Any]) -> nn.Module:
    """Slice `model` in place as `plan` says and return it: an ordinary, smaller nn.Module.

    Layers already at the planned size are left alone, so applying a plan twice changes nothing.
    """
    plan = plan if isinstance(plan, ChannelPlan) else ChannelPlan.from_dict(plan)
    for name, entry in plan.modules.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"the channel plan names '{name}', which the model does not have") from None
        if entry["type"] == "shortcut":  # a module that zero-pads channels (the type's name predates the rules)
            rule = channel_rule(module)
            if rule is None:
                raise UnsupportedOpError(f"plan entry '{name}' expects a module that zero-pads channels (a "
                                         f"slimkit.channel_rules.ZeroPadChannels rule), found {type(module)}")
            rule.resize(module, tuple(entry["pad"]))
            continue
        planned = _planned_module(name, module, entry)
        size = len(entry["keep"] if entry["type"] == "norm" else entry["out"])
        in_size = len(entry.get("in", []))
        if _current_size(planned) == size and (isinstance(planned, Norm) or _in_size(planned) == in_size):
            continue
        _check_bounds(name, planned, entry)
        with torch.device(device_of(module)):  # the smaller layer where the old one was, on a GPU too
            new = _sliced_norm(planned, entry["keep"]) if isinstance(planned, Norm) else _sliced_layer(planned, entry)
        model.set_submodule(name, new)
    return model


def _planned_module(name: str, module: nn.Module, entry: dict[str, Any]) -> Layer | Norm:
    """`module` as the type its plan entry is for: a plan from a file may name another kind of layer."""
    kinds = {"norm": (nn.BatchNorm1d, nn.BatchNorm2d, nn.PReLU), "conv": (nn.Conv2d,), "linear": (nn.Linear,)}
    if not isinstance(module, kinds[entry["type"]]) or not isinstance(module, Layer | Norm):
        raise CheckpointError(f"the channel plan's entry '{name}' is for a {entry['type']} layer, and the model's "
                              f"'{name}' is a {type(module).__name__}")
    return module


def _in_size(module: Layer) -> int:
    return module.in_channels if isinstance(module, nn.Conv2d) else module.in_features


def _check_bounds(name: str, module: Layer | Norm, entry: dict[str, Any]) -> None:
    """A plan from a file may name channels the layer does not have: an error naming the entry, before any
    slicing."""
    sizes = {"keep": _current_size(module)} if isinstance(module, Norm) else {
        "out": _current_size(module), "in": _in_size(module)}
    for key, size in sizes.items():
        if any(i >= size for i in entry[key]):
            raise CheckpointError(f"the channel plan's entry '{name}.{key}' names channel {max(entry[key])} of a "
                                  f"layer with {size}")


@torch.no_grad()
def zero_channels(model: nn.Module, graph: ChannelGraph, removed: set[int]) -> nn.Module:
    """The masked reference: outputs of removed channels are exactly 0 (conv/linear rows and bias zeroed,
    BN gamma and beta zeroed), so the pruned model must compute the same function. It acts on `model`, found
    by the graph's module names, not on the modules the graph was traced from."""
    for name, elements in graph.producers.items():
        module = model.get_submodule(name)
        rows = [i for i, e in enumerate(elements) if graph.find(e) in removed]
        if rows:
            layer_tensor(module)[rows] = 0
            bias = layer_bias(module)
            if bias is not None:
                bias[rows] = 0
    for name, slots in graph.channel_users.items():
        module = model.get_submodule(name)
        rows = [i for i, e in enumerate(slots) if graph.find(e) in removed]
        if rows and isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            module.weight[rows] = 0
            module.bias[rows] = 0
    return model
