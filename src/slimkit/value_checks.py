"""Checks of the tensor values slimkit is handed (a model, a checkpoint's weights and optimizer state), before
anything trains on them: NaN or Inf, layers with no weights, and optimizer states whose shapes do not fit
their parameters. Each finding names the tensor, so a diverged or tampered file is refused, not trained on
or reported as if it were a model."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torch import Tensor, nn
from torch.nn.parameter import is_lazy
from torch.optim import Optimizer

from slimkit.errors import SlimkitError


def non_finite(tensors: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point tensors in `tensors` that hold NaN or Inf (a lazy module's parameter
    holds no values until its first forward, and is skipped)."""
    return [name for name, t in tensors.items() if isinstance(t, Tensor) and not is_lazy(t)
            and t.is_floating_point() and not bool(t.isfinite().all())]


def check_model_values(model: nn.Module) -> None:
    """A model slimkit can compress: finite weights and buffers, and no layer whose weight has no elements
    (pruning, measuring and deploying all index into a layer's weights)."""
    bad = non_finite(model.state_dict())
    if bad:
        raise SlimkitError(f"the model's {bad[0]} holds NaN or Inf values; compressing it would train on NaN")
    for name, param in model.named_parameters():
        if not is_lazy(param) and param.numel() == 0:
            layer = name.rpartition(".")[0] or name
            module = model.get_submodule(layer) if layer != name else model
            raise SlimkitError(f"the model's layer '{layer}' ({type(module).__name__}) has a {name.rpartition('.')[2]} "
                               f"of shape {list(param.shape)}, which holds no values; remove the layer or give it "
                               f"a size")


def optimizer_states(saved: Mapping[str, Any]) -> Iterator[tuple[str, Tensor]]:
    """(field path, tensor) of every tensor in an optimizer state_dict's `state`."""
    for key, state in saved["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                yield f"optimizer.state[{key!r}].{name}", value


def optimizer_state_issue(saved: Mapping[str, Any], optimizer: Optimizer, names: Mapping[Tensor, str]) -> str | None:
    """What does not fit in `saved` (an optimizer state_dict `optimizer` has just loaded, which matches states
    to parameters by position and checks only their counts) as 'field ... is [3, 4], and its parameter
    conv.weight is [4, 3]'; None when every state fits. A step counter is a single value; every other state
    tensor (momentum, Adam's moments) has its parameter's shape. Such a state otherwise fails deep in the
    first optimizer step, or broadcasts silently."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    ids = [i for group in saved["param_groups"] for i in group["params"]]
    owner = dict(zip(ids, params, strict=True))
    for key, state in saved["state"].items():
        if key not in owner:
            return f"field 'optimizer.state[{key!r}]' belongs to no parameter of the run's optimizer"
        param = owner[key]
        for name, value in state.items():
            if not isinstance(value, Tensor):
                continue
            fits = value.numel() == 1 if name == "step" else value.shape == param.shape
            if not fits:
                wanted = "one value" if name == "step" else f"its parameter {names.get(param, '?')} is " \
                                                           f"{list(param.shape)}"
                return f"field 'optimizer.state[{key!r}].{name}' is {list(value.shape)}, and {wanted}"
    return None
