"""The channel graph classifies every op by what it does to the channel dimension and either handles it
exactly (checked against the independent dead-channel reference: the original with the removed channels
zeroed) or refuses it, naming the op and the module. Never a smaller model with wrong outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from slimkit.channels import UnsupportedOpError, apply_plan, build_graph, make_plan, zero_channels
from slimkit.channels.importance import CRITERIA
from slimkit.channels.select import select_removed


class Body(nn.Module):
    """conv -> BN -> ReLU -> `mix` -> conv -> pooled linear head; `mix` is the op under test."""

    def __init__(self, mix, extra: nn.Module | None = None, channels: int = 8):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, 6, 3, padding=1)
        self.head = nn.Linear(6, 4)
        self.mix, self.extra = mix, extra or nn.Identity()

    def forward(self, x):
        h = self.mix(self, torch.relu(self.bn1(self.conv1(x))))
        return self.head(self.conv2(h).mean((2, 3)))


class LastDimLinear(nn.Module):
    """(N, C, L) features with a Linear over L, where L equals C."""

    def __init__(self, channels: int = 8, bias: bool = False):
        super().__init__()
        self.proj = nn.Linear(channels, channels, bias=bias)  # applied to the length dimension, not the channels
        self.expand = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.expand(x)))
        h = self.proj(h.flatten(2)[..., : self.proj.in_features])
        return self.head(h.mean(2))


def _dead_channel_check(model: nn.Module, x: torch.Tensor, ratio: float = 0.5) -> None:
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.2, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    model.eval()
    graph = build_graph(model, x[:1])
    removed = select_removed(graph, CRITERIA["l1"](graph), ratio)
    assert removed
    pruned = apply_plan(copy.deepcopy(model), make_plan(graph, removed)).eval()
    reference = zero_channels(copy.deepcopy(model), graph, removed)
    with torch.no_grad():
        assert torch.allclose(pruned(x), reference(x), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())


HANDLED = {
    "softmax over the last dim": lambda self, h: h * F.softmax(h, dim=-1),
    "spatial mean, keepdim": lambda self, h: h * h.mean((2, 3), keepdim=True).sigmoid(),
    "spatial padding": lambda self, h: F.pad(h, (1, 1, 1, 1))[:, :, 1:-1, 1:-1],
}
MODULES = {"nn.Softmax over width": (nn.Softmax(dim=3), True), "nn.Softmax over channels": (nn.Softmax(dim=1), False),
           "nn.LogSoftmax, implicit dim": (nn.LogSoftmax(), False)}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_normalising_modules_by_their_dim(name):
    module, handled = MODULES[name]
    model = Body(lambda self, h: h * self.extra(h), module)
    if handled:
        _dead_channel_check(model, torch.randn(4, 3, 8, 8))
    else:
        with pytest.raises(UnsupportedOpError, match="normalises over the channel dimension"):
            build_graph(model, torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("name", sorted(HANDLED))
def test_ops_that_leave_channels_alone_prune_exactly(name):
    _dead_channel_check(Body(HANDLED[name]), torch.randn(4, 3, 8, 8))


def test_a_linear_over_another_dimension_lets_channels_pass():
    model = LastDimLinear()
    _dead_channel_check(model, torch.randn(4, 8, 8, 8))
    graph = build_graph(model, torch.randn(1, 8, 8, 8))
    assert "proj" not in graph.producers  # never pruned: its features are not channels


def _prunable_outputs(model: nn.Module, x: torch.Tensor, layer: str) -> int:
    graph = build_graph(model, x)
    roots = set(graph.prunable())
    return sum(graph.find(e) in roots for e in graph.producers[layer])


def test_channels_an_op_makes_non_zero_are_kept_where_they_are_read():
    x = torch.randn(1, 8, 8, 8)
    assert _prunable_outputs(LastDimLinear(bias=False), x, "expand") == 8
    assert _prunable_outputs(LastDimLinear(bias=True), x, "expand") == 0  # the bias makes a zero channel live
    sigmoid_then_conv = Body(lambda self, h: torch.sigmoid(h))  # sigmoid(0) = 0.5 would reach conv2
    assert _prunable_outputs(sigmoid_then_conv, torch.randn(1, 3, 8, 8), "conv1") == 0
    gated = Body(lambda self, h: h * torch.sigmoid(h.mean((2, 3), keepdim=True)))  # 0 * gate stays 0
    assert _prunable_outputs(gated, torch.randn(1, 3, 8, 8), "conv1") == 8
    _dead_channel_check(gated, torch.randn(4, 3, 8, 8))
    shifted = Body(lambda self, h: h + 1.0)
    assert _prunable_outputs(shifted, torch.randn(1, 3, 8, 8), "conv1") == 0


REFUSED = {
    "softmax over channels": (lambda self, h: h * F.softmax(h, dim=1), "normalises over the channel"),
    "softmax method over channels": (lambda self, h: h * h.softmax(1), "normalises over the channel"),
    "mean over channels, H == C": (lambda self, h: h * h.mean(1, keepdim=True), "reduces over the channel"),
    "channel mean without keepdim": (lambda self, h: h * h.mean(1)[:, None], "reduces over the channel"),
    "a global mean": (lambda self, h: h / h.mean(), "reduces over the channel"),
    "layer norm over channels": (lambda self, h: F.layer_norm(h.permute(0, 2, 3, 1), (8,)).permute(0, 3, 1, 2),
                                 "does not know how this op moves channels"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_ops_that_mix_channels_are_refused_naming_the_op(name):
    mix, message = REFUSED[name]
    with pytest.raises(UnsupportedOpError, match=message) as error:
        build_graph(Body(mix), torch.randn(1, 3, 8, 8))
    assert "cannot prune through" in str(error.value)


def test_padding_the_channels_of_a_flat_tensor_is_refused():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(10, 2)

        def forward(self, x):
            return self.b(F.pad(self.a(x), (1, 1)))

    with pytest.raises(UnsupportedOpError, match="cannot prune through"):
        build_graph(Flat(), torch.randn(1, 6))


def test_zero_channels_acts_on_the_model_it_is_given():
    model = Body(HANDLED["spatial padding"]).eval()
    graph = build_graph(model, torch.randn(1, 3, 8, 8))
    removed = select_removed(graph, CRITERIA["l1"](graph), 0.5)
    before = model.conv1.weight.detach().clone()
    other = copy.deepcopy(model)
    assert zero_channels(other, graph, removed) is other
    assert torch.equal(model.conv1.weight, before)  # the traced model is left alone
    zeroed_rows = (other.conv1.weight.flatten(1) == 0).all(1)
    assert int(zeroed_rows.sum()) == sum(graph.find(e) in removed for e in graph.producers["conv1"]) > 0
