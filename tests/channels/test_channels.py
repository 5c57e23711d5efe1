"""Channel pruning: the dependency graph, GFBS, surgery equal to the masked model, plans, schedules."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slimkit
from slimkit.channels import UnsupportedOpError, apply_plan, build_graph, make_plan, prune_channels, zero_channels
from slimkit.channels.graph import ChannelGraph
from slimkit.channels.importance import CRITERIA, gfbs_formula
from slimkit.channels.plan import ChannelPlan
from slimkit.channels.select import select_removed
from slimkit.metrics import count_macs
from slimkit.models import MODELS, build_model, resnet56
from slimkit.recipe import ModelConfig, Recipe

# --- GFBS (spec section 3) ----------------------------------------------------------------------------

A = dict(gamma=torch.tensor([1.0, 2.0]), grad=torch.tensor([0.3, -0.4]), beta=torch.tensor([0.5, -0.5]))
B = dict(gamma=torch.tensor([3.0, 4.0]), grad=torch.tensor([0.6, 0.8]), beta=torch.tensor([1.0, 0.0]))


def test_gfbs_scores_match_the_spec_example():
    assert gfbs_formula(**A).tolist() == pytest.approx([0.3037, 0.6802], abs=1e-4)
    assert gfbs_formula(**B).tolist() == pytest.approx([0.41, 0.64], abs=1e-4)


def test_gfbs_selection_removes_a0_and_b0():
    graph = ChannelGraph()
    graph.producers = {"A": graph.new(2), "B": graph.new(2)}
    graph.channel_users = {"bnA": graph.producers["A"], "bnB": graph.producers["B"]}
    scores = dict(zip(graph.producers["A"], gfbs_formula(**A).tolist(), strict=True))
    scores |= dict(zip(graph.producers["B"], gfbs_formula(**B).tolist(), strict=True))
    removed = select_removed(graph, scores, 0.5)
    assert removed == {graph.producers["A"][0], graph.producers["B"][0]}


@pytest.mark.parametrize("key", ["gamma", "grad", "beta"])
def test_gfbs_is_invariant_to_positive_per_layer_scaling(key):
    scaled = {**A, key: A[key] * 7.3}
    assert torch.allclose(gfbs_formula(**scaled), gfbs_formula(**A))


def test_no_layer_loses_every_channel():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vgg_small", width=0.25), 3, 10, 32)
    pruned, _ = prune_channels(model, torch.randn(1, 3, 32, 32), ratio=0.99)
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels >= 1 for c in convs) and min(c.out_channels for c in convs[:-1]) == 1


def test_min_channels_and_round_to():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vgg_small", width=0.5), 3, 10, 32)
    pruned, _ = prune_channels(model, torch.randn(1, 3, 32, 32), ratio=0.6, scope="layer", round_to=8,
                               min_channels=16)
    widths = [m.out_channels for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 and w >= 16 for w in widths), widths


# --- surgery equals the masked model ------------------------------------------------------------------

def _realistic_bn(model: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) + 0.5
            m.bias.data = 0.1 * torch.randn(n, generator=g)
            m.running_mean = 0.1 * torch.randn(n, generator=g)
            m.running_var = torch.rand(n, generator=g) + 0.5
    return model.eval()


def assert_surgery_matches_mask(model: nn.Module, x: torch.Tensor, ratio: float = 0.5) -> nn.Module:
    """Slice `model` at `ratio` by L1 and check it against the channel-zeroed original (rtol = atol = 1e-5)."""
    model = _realistic_bn(model)
    masked = copy.deepcopy(model)
    graph = build_graph(masked, x[:1])
    removed = select_removed(graph, CRITERIA["l1"](graph), ratio)
    assert removed, "nothing was pruned"
    plan = make_plan(graph, removed)
    pruned = apply_plan(copy.deepcopy(model), plan).eval()
    zero_channels(masked, graph, removed)
    with torch.no_grad():
        expected, got = masked(x), pruned(x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5), (got - expected).abs().max()
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert params(pruned) < params(model)
    assert type(pruned) is type(model)  # an ordinary model of the same class
    return pruned


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_zoo_model(name):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, width=0.5), 3, 10, 32)
    assert_surgery_matches_mask(model, torch.randn(4, 3, 32, 32))


@pytest.mark.parametrize("options", [{"block": "bireal"}, {"shortcut": "avgpool"},
                                     {"activation": "prelu", "head_bn": True}])
def test_resnet20_variants(options):
    torch.manual_seed(0)
    assert_surgery_matches_mask(build_model(ModelConfig(name="resnet20", options=options), 3, 10, 32),
                                torch.randn(4, 3, 32, 32))


def conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class ProjectionResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.body = nn.Sequential(conv_bn(16, 32, stride=2), nn.Conv2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32))
        self.proj = nn.Sequential(nn.Conv2d(16, 32, 1, 2), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.body(x) + self.proj(x))
        return self.head(x.mean((2, 3)))


class Inception(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 12)
        self.a, self.b = conv_bn(12, 8, 1), nn.Sequential(conv_bn(12, 6, 1), conv_bn(6, 10))
        self.c = conv_bn(12, 4, 1)
        self.mix = conv_bn(22, 16)
        self.head = nn.Linear(16 * 32 * 32, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x), self.c(F.max_pool2d(x, 3, 1, 1))], dim=1)
        return self.head(torch.flatten(self.mix(x), 1))


class MobileNetBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.dw = conv_bn(16, 16, groups=16)
        self.pw = conv_bn(16, 24, 1)
        self.dw2 = conv_bn(24, 48, groups=24)  # depthwise with channel multiplier 2
        self.fc = nn.Linear(48, 5)

    def forward(self, x):
        x = self.dw2(self.pw(self.dw(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class GroupedConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 32)
        self.grouped = conv_bn(32, 32, groups=4)
        self.out = conv_bn(32, 16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        return self.fc(self.out(self.grouped(self.stem(x))).mean((2, 3)))


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 24)
        self.conv = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1), nn.BatchNorm2d(24))
        self.fc1, self.fc2 = nn.Linear(24, 6), nn.Linear(6, 24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.conv(x)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3))))))
        y = y * gate.view(y.size(0), -1, 1, 1)
        return self.fc(F.relu(y + x).mean((2, 3)))


class NestedDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleDict({"first": nn.Sequential(conv_bn(3, 16), conv_bn(16, 16)),
                                     "second": nn.Sequential(conv_bn(16, 32, stride=2))})
        self.fc = nn.Linear(32 * 16 * 16, 5)

    def forward(self, x):
        for block in self.blocks.values():
            x = block(x)
        return self.fc(x.view(x.size(0), -1))


class ReusedConv(nn.Module):
    """One conv applied twice: both calls share its input and output channels."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.shared = nn.Conv2d(16, 16, 3, 1, 1)
        self.bn = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.bn(self.shared(F.relu(self.shared(x)))))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("model_cls", [ProjectionResidual, Inception, MobileNetBlock, GroupedConvNet, SqueezeExcite,
                                       NestedDict, ReusedConv])
def test_architectures_beyond_the_zoo(model_cls):
    torch.manual_seed(0)
    pruned = assert_surgery_matches_mask(model_cls(), torch.randn(3, 3, 32, 32), ratio=0.4)
    if model_cls is GroupedConvNet:
        assert pruned.grouped[0].groups < 4 and pruned.grouped[0].in_channels % pruned.grouped[0].groups == 0
    if model_cls is MobileNetBlock:
        dw = pruned.dw[0]
        assert dw.groups == dw.in_channels == dw.out_channels < 16


class Transposes(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.conv(x).transpose(1, 3))


class WithLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.body(x).mean((2, 3)))


def test_unsupported_ops_stop_with_a_clear_error():
    with pytest.raises(UnsupportedOpError, match=r"transpose.*cannot prune|cannot prune.*transpose"):
        build_graph(Transposes(), torch.randn(1, 3, 32, 32))
    with pytest.raises(UnsupportedOpError, match=r"module 'body.1' \(GroupNorm\)"):
        build_graph(WithLayerNorm(), torch.randn(1, 3, 32, 32))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) if x.sum() > 0 else x


def test_untraceable_model_is_a_clear_error():
    with pytest.raises(UnsupportedOpError, match=r"cannot trace module .* with torch\.fx"):
        build_graph(DataDependent(), torch.randn(1, 3, 8, 8))
    with pytest.raises(UnsupportedOpError, match="does not run on the example input"):
        build_graph(WithLayerNorm(), torch.randn(1, 5, 8, 8))


# --- MACs, persistence, schedules -----------------------------------------------------------------------

def test_half_the_channels_of_resnet56_leave_under_30_percent_of_macs():
    torch.manual_seed(0)
    model = resnet56()
    before = sum(count_macs(model, (3, 32, 32)).values())
    pruned, _ = prune_channels(model, torch.randn(1, 3, 32, 32), ratio=0.5)
    assert sum(count_macs(pruned, (3, 32, 32)).values()) / before <= 0.30


def test_save_and_load_through_the_plan(tmp_path):
    torch.manual_seed(0)
    arch = ModelConfig(name="resnet20", width=0.5, in_channels=1, num_classes=10, input_size=28)
    model = build_model(arch, 1, 10, 28)
    pruned, plan = prune_channels(model, torch.randn(1, 1, 28, 28), ratio=0.5)
    plan.save(tmp_path / "plan.json")
    torch.save(pruned.state_dict(), tmp_path / "weights.pt")
    json.loads((tmp_path / "plan.json").read_text())  # plain JSON
    rebuilt = slimkit.load(arch.model_dump(), ChannelPlan.load(tmp_path / "plan.json"),
                           torch.load(tmp_path / "weights.pt", weights_only=True))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(rebuilt(x), pruned.eval()(x))
    assert ChannelPlan.from_dict(plan.to_dict()).modules == plan.modules


def test_iterative_plans_compose_to_original_indices():
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="vgg_small", width=0.25), 3, 10, 32)
    x = torch.randn(1, 3, 32, 32)
    original = copy.deepcopy(model)
    _, first = prune_channels(model, x, ratio=0.3)
    _, second = prune_channels(model, x, ratio=0.3)
    rebuilt = apply_plan(original, first.then(second)).eval()
    model.eval()
    assert torch.equal(rebuilt(x), model(x))


def _channel_recipe(method, **stage):
    return Recipe.from_dict({
        "name": f"ch-{method}", "model": {"name": "resnet20", "width": 0.5},
        "data": {"name": "digits", "batch_size": 64},
        "baseline": {"epochs": 2, "lr": 0.05},
        "train": {"epochs": 3, "lr": 0.02},
        "stages": [{"channels": {"method": method, "ratio": 0.5, **stage}}],
        "measure": {"batch_sizes": [1], "repeats": 2, "warmup": 1},
    })


@pytest.mark.slow
@pytest.mark.parametrize("method", ["l1", "bn_scale", "taylor", "gfbs"])
def test_every_criterion_runs_from_a_recipe_and_reloads(tmp_path, method):
    run = slimkit.run_recipe(_channel_recipe(method), tmp_path / method, progress=False)
    stage = run.metrics["stages"][0]
    assert stage["removed_groups"] == stage["candidate_groups"] - int(stage["candidate_groups"] * 0.5)
    dense, comp = (run.metrics["models"][k]["measurement"] for k in ("dense", "compressed"))
    assert comp["params"] < dense["params"] and comp["macs"] < dense["macs"]
    reloaded = slimkit.load(tmp_path / method / "model.pt")
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(reloaded(x), run.model.eval()(x))
    assert ChannelPlan.load(tmp_path / method / "plan.json").modules


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_iterative_schedule_and_resume_after_pruning(tmp_path):
    recipe = _channel_recipe("bn_scale", steps=2, every=1, l1_penalty=1e-4)
    full = slimkit.run_recipe(recipe, tmp_path / "full", progress=False)
    assert full.metrics["stages"][0]["rounds"] == 2
    assert [r["complete"] for r in full.metrics["models"]["compressed"]["history"]] == [False, True, True]
    calls = []

    def stop_after_pruned_epoch(record):
        calls.append(record)
        if len(calls) == 4:  # 2 dense epochs, then compressed epochs 0 and 1 (both rounds done)
            raise Interrupt

    with pytest.raises(Interrupt):
        slimkit.run_recipe(recipe, tmp_path / "killed", progress=False, callbacks=(stop_after_pruned_epoch,))
    resumed = slimkit.run_recipe(recipe, tmp_path / "killed", resume=True, progress=False)
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert resumed.metrics["models"]["compressed"]["test_acc"] == full.metrics["models"]["compressed"]["test_acc"]


def test_bn_criteria_need_batchnorm():
    with pytest.raises(slimkit.SlimkitError, match="scores no channel"):
        prune_channels(build_model(ModelConfig(name="lenet"), 1, 10, 28), torch.randn(1, 1, 28, 28), ratio=0.5,
                       criterion="bn_scale")


# --- channel rules: a module declares how it moves channels -------------------------------------------

class PadChannels(nn.Module):
    """A user's module that zero-pads channels, as option-A shortcuts do: the graph cannot trace through its
    channel padding."""

    def __init__(self, left: int, right: int):
        super().__init__()
        self.widths = (left, right)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, 0, 0, 0, *self.widths))


class PaddedResidual(nn.Module):
    def __init__(self):
        super().__init__()
        self.narrow, self.wide = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.pad, self.head = PadChannels(1, 3), nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.pad(torch.relu(self.narrow(x))) + self.wide(x)))


@pytest.fixture
def pad_rule():
    from slimkit.channel_rules import _RULES, ZeroPadChannels, register_channel_rule

    register_channel_rule(PadChannels, ZeroPadChannels(pads=lambda m: m.widths,
                                                       resize=lambda m, widths: setattr(m, "widths", widths)))
    yield
    del _RULES[PadChannels]


def test_a_module_without_a_channel_rule_is_refused():
    with pytest.raises(UnsupportedOpError, match=r"cannot prune through %pad .*\(in module 'pad'\)"):
        build_graph(PaddedResidual(), torch.randn(1, 3, 8, 8))


def test_a_user_module_declaring_a_channel_rule_is_pruned_through(pad_rule):
    torch.manual_seed(0)
    model = PaddedResidual()
    graph = build_graph(model, torch.randn(1, 3, 8, 8))
    out, left, right = graph.zero_pads["pad"]
    assert (left, right) == (1, 3) and len(out) == 8
    assert graph.find(out[1]) == graph.find(graph.producers["narrow"][0])  # narrow's channel 0 joins wide's 1
    assert graph.find(out[1]) == graph.find(graph.producers["wide"][1])
    pruned = assert_surgery_matches_mask(model, torch.randn(4, 3, 8, 8), ratio=0.5)
    kept = pruned.wide.out_channels
    assert kept < 8 and sum(pruned.pad.widths) + pruned.narrow.out_channels == kept  # the rule re-sized the pads


def test_a_plan_entry_for_zero_padding_on_a_module_without_a_rule_is_refused():
    with pytest.raises(UnsupportedOpError, match="expects a module that zero-pads channels"):
        apply_plan(PaddedResidual(), {"modules": {"pad": {"type": "shortcut", "pad": [0, 1]}}})
