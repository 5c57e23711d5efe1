"""Channel groups from the channel graph, and sensitivities: a residual stream is one group of every layer that
writes it; a form's loss increase is measured on a copy (the model is untouched), and narrowing a group costs
what zeroing its lowest-L1 channels costs (the masked reference, computed independently of the slicing)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from slimkit.channels import build_graph, zero_channels
from slimkit.target.forms import FP32, LayerKind, target_layers
from slimkit.target.groups import channel_groups
from slimkit.target.sensitivity import kind_sensitivity, mean_loss, width_sensitivity
from slimkit.train.objective import Objective


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(32)
        self.inner = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.outer = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.outer(F.relu(self.bn1(self.inner(x)))))
        return self.fc(F.adaptive_avg_pool2d(F.relu(x + y), 1).flatten(1))


def _setup() -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = Residual()
    for bn in (model.bn0, model.bn1, model.bn2):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    batches = [(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))) for _ in range(2)]
    return model.eval(), batches


def test_the_residual_stream_is_one_group_of_both_layers_that_write_it():
    model, batches = _setup()
    groups = channel_groups(model, batches[0][0][:1], target_layers(model), [0.5, 0.25], 8)
    by_writers = {frozenset(g.producers): g for g in groups.groups}
    stream = by_writers[frozenset({"stem", "outer"})]
    assert stream.consumers == {"inner": 1, "fc": 1} and stream.size == 32 and stream.choices == (32, 16, 8)
    assert set(by_writers) == {frozenset({"stem", "outer"}), frozenset({"inner"})}
    kept = tuple(8 if g is stream else g.size for g in groups.groups)
    assert groups.widths(kept) == {"stem": 8, "outer": 8, "inner": 32}
    assert groups.in_width("fc", kept) == 8 and groups.in_width("inner", kept) == 8


def test_narrowing_a_group_costs_what_zeroing_its_weakest_channels_costs():
    model, batches = _setup()
    before = copy.deepcopy(model.state_dict())
    objective = Objective()
    groups = channel_groups(model, batches[0][0][:1], target_layers(model), [0.5], 8)
    index = next(i for i, g in enumerate(groups.groups) if "inner" in g.producers)
    costs = width_sensitivity(model, groups, batches, objective)
    assert costs[index][32] == 0.0
    graph = build_graph(model, batches[0][0][:1])
    norms = model.inner.weight.detach().abs().sum((1, 2, 3))
    weakest = norms.argsort()[:16].tolist()
    removed = {graph.find(graph.producers["inner"][i]) for i in weakest}
    masked = zero_channels(copy.deepcopy(model), graph, removed)
    base = mean_loss(model, batches, objective)
    assert costs[index][16] == pytest.approx(mean_loss(masked, batches, objective) - base, abs=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_kind_costs_nothing_in_fp32_and_its_loss_change_elsewhere_leaving_the_model_untouched():
    model, batches = _setup()
    before = copy.deepcopy(model.state_dict())
    kinds = {"inner": [FP32, LayerKind("int8"), LayerKind("sparse_int8", 0.9)]}
    costs = kind_sensitivity(model, kinds, batches, Objective(), None)
    base = mean_loss(model, batches, Objective())
    assert costs["inner"]["fp32"] == 0.0
    assert abs(costs["inner"]["int8"]) < 1e-3 * base  # 8-bit rounding of one layer barely moves the loss
    assert abs(costs["inner"]["sparse_int8@0.9"]) > 10 * abs(costs["inner"]["int8"])  # 90% of its blocks gone does
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

