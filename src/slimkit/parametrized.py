"""Adding and removing weight parametrizations (masks, quantizers) without breaking copies of the model.

torch.nn.utils.parametrize gives a parametrized module a class of its own (`ParametrizedLinear`) that
carries a property per parametrized tensor. `copy.deepcopy`, the usual best-model copy in a training loop,
gives the copy that same class object. Removing a parametrization deletes the property from the class, so
the copy, still parametrized, lost its `weight` ('ParametrizedLinear' object has no attribute 'weight') when
the original was finalized. Every change slimkit makes to a parametrized module's class therefore happens
on a class of the module's own, and a copy taken at any point stays a working model.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize


def _own_class(module: nn.Module) -> None:
    """Give a parametrized `module` a fresh copy of its class, so that torch's changes to that class reach
    no other module (a deep copy shares the original's)."""
    if parametrize.is_parametrized(module):
        cls = type(module)
        attributes = {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")}
        module.__class__ = type(cls.__name__, cls.__bases__, attributes)


def add_parametrization(module: nn.Module, name: str, parametrization: nn.Module) -> None:
    """`parametrize.register_parametrization`, changing no class another module uses."""
    _own_class(module)
    parametrize.register_parametrization(module, name, parametrization)


def remove_parametrization(module: nn.Module, name: str) -> None:
    """`parametrize.remove_parametrizations(leave_parametrized=True)`: the tensor keeps its parametrized
    value; no class another module uses is changed."""
    _own_class(module)
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
