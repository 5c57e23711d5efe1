"""Per-layer channel widths (`channels: {widths: ...}`, what a latency target writes): every named layer keeps
exactly its width, the layers of one residual stream share one, widths that disagree or that no layer settles
are errors, and the stage prunes as it attaches, so masks and quantizers of later stages sit on sliced layers."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from slimkit.channels import apply_plan, plan_pruning
from slimkit.errors import RecipeError, SlimkitError
from slimkit.methods import build_modifier, parse_stage
from slimkit.models import resnet20
from slimkit.train.compression import Compression

EXAMPLE = torch.randn(1, 3, 32, 32)
STAGE_1 = ["conv1"] + [f"layer1.{i}.conv2" for i in range(3)]  # the stem and every block's conv2 write one stream


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet20(width=1.0).eval()


def test_named_layers_keep_exactly_their_widths_and_a_stream_keeps_one():
    model = _resnet()
    widths = {**dict.fromkeys(STAGE_1, 8), "layer1.1.conv1": 4, "layer2.0.conv1": 24}
    reference = copy.deepcopy(model)
    apply_plan(model, plan_pruning(model, EXAMPLE, ratio=0.0, widths=widths))
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert {n: convs[n].out_channels for n in widths} == widths
    assert convs["layer2.0.conv2"].out_channels == 32 - 16 + 8  # the stage-1 stream goes on inside stage 2's
    assert convs["layer2.1.conv1"].out_channels == 32 and convs["layer1.0.conv1"].out_channels == 16  # not named
    assert model(torch.randn(2, 3, 32, 32)).shape == reference(torch.randn(2, 3, 32, 32)).shape


def test_the_lowest_l1_channels_of_a_layer_go():
    model = _resnet()
    norms = model.layer1[1].conv1.weight.detach().abs().sum((1, 2, 3))
    plan = plan_pruning(model, EXAMPLE, ratio=0.0, widths={"layer1.1.conv1": 4})
    assert sorted(plan.modules["layer1.1.conv1"]["out"]) == sorted(norms.argsort(descending=True)[:4].tolist())


@pytest.mark.parametrize("widths, message", [
    ({"conv1": 8, "layer1.0.conv2": 16}, "keeps 8 channels"),  # one stream, two widths
    ({"layer2.0.conv2": 24}, "no named layer settles"),  # two streams meet in it: which one narrows?
    ({"layer1.0.conv1": 17}, "cannot keep 17"),
    ({"nope": 4}, "produce no channels"),
])
def test_widths_that_no_plan_gives_are_errors_naming_the_layer(widths, message):
    with pytest.raises(SlimkitError, match=message):
        plan_pruning(_resnet(), EXAMPLE, ratio=0.0, widths=widths)


def test_widths_come_alone():
    with pytest.raises(RecipeError, match="give ratio 0, steps 1 and start_epoch 0"):
        parse_stage({"channels": {"method": "l1", "ratio": 0.5, "widths": {"conv1": 8}}})
    with pytest.raises(RecipeError, match="at least 1 channel"):
        parse_stage({"channels": {"method": "l1", "ratio": 0.0, "widths": {"conv1": 0}}})


def _stages() -> list:
    return [build_modifier(parse_stage(s)) for s in (
        {"channels": {"method": "l1", "ratio": 0.0, "widths": {"layer1.1.conv1": 8}}},
        {"prune": {"method": "magnitude", "sparsity": 0.5, "block": 4, "scope": "layer",
                   "layers": {"include": ["layer1.1.conv*"]}}})]


def test_the_stage_slices_as_it_attaches_so_later_masks_sit_on_the_sliced_layers_and_a_resume_agrees():
    batches = [(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))]
    model = _resnet()
    compression = Compression(model, _stages(), epochs=1, steps_per_epoch=1, data=batches)
    assert model.layer1[1].conv1.out_channels == 8 and model.layer1[1].conv2.in_channels == 8
    compression.start_epoch(0)
    state, weights = compression.state_dict(), copy.deepcopy(model.state_dict())
    resumed = _resnet()
    Compression(resumed, _stages(), epochs=1, steps_per_epoch=1, data=batches, state=state)
    resumed.load_state_dict(weights)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(resumed.eval()(x), model.eval()(x))
