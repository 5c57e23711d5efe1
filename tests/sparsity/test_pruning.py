import pytest
import torch
from torch import nn

from slimkit.data import load_data
from slimkit.errors import UnsupportedLayerError
from slimkit.layers import LayerSelection, select_layers
from slimkit.models import lenet, resnet20
from slimkit.recipe import DataConfig, TrainConfig
from slimkit.sparsity import (
    GradualMagnitudeConfig,
    GradualMagnitudeModifier,
    MagnitudeConfig,
    MagnitudeModifier,
    masked_layers,
)
from slimkit.sparsity.pruner import PruneModifier
from slimkit.sparsity.topk import keep_count
from slimkit.train import TrainContext, Trainer


def test_default_selection_skips_first_conv_and_last_linear():
    assert list(select_layers(lenet(), LayerSelection())) == ["features.3", "classifier.1"]
    names = list(select_layers(resnet20(), LayerSelection()))
    assert "conv1" not in names and "fc" not in names and len(names) == 18


def test_selection_by_type_and_pattern():
    model = resnet20()
    only_stage3 = select_layers(model, LayerSelection(include=["layer3.*"]))
    assert len(only_stage3) == 6 and all(n.startswith("layer3.") for n in only_stage3)
    no_conv2 = select_layers(model, LayerSelection(exclude=["*.conv2"]))
    assert len(no_conv2) == 9
    linears = select_layers(lenet(), LayerSelection(types=["linear"], skip_last_linear=False))
    assert list(linears) == ["classifier.1", "classifier.3"]


def test_unsupported_layer_and_empty_selection_are_errors():
    with pytest.raises(UnsupportedLayerError, match=r"matches only unsupported layers: bn1 \(BatchNorm2d\)"):
        select_layers(resnet20(), LayerSelection(include=["bn1"]))
    with pytest.raises(UnsupportedLayerError, match="picks no layer"):
        select_layers(lenet(), LayerSelection(include=["nothing.*"]))


def _selected_stats(pruner: PruneModifier) -> tuple[int, int]:
    total = sum(mask.mask.numel() for _, mask in pruner.masks.values())
    kept = sum(int(mask.mask.sum()) for _, mask in pruner.masks.values())
    return total, kept


def test_gradual_schedule_is_cubic_monotone_and_exact():
    torch.manual_seed(0)
    model = lenet(in_channels=1, input_size=8)
    # max_layer_sparsity: global 90% would empty features.3
    pruner = GradualMagnitudeModifier(GradualMagnitudeConfig(sparsity=0.9, start_epoch=1, end_epoch=5,
                                                             updates_per_epoch=2, scope="global",
                                                             max_layer_sparsity=0.98))
    ctx = TrainContext(model, epochs=6, steps_per_epoch=10)
    pruner.attach(model, ctx)
    total, _ = _selected_stats(pruner)
    previous = torch.ones(total, dtype=torch.bool)
    seen = []
    for epoch in range(6):
        pruner.on_epoch_start(epoch, ctx)
        for step in range(epoch * 10 + 1, epoch * 10 + 11):
            pruner.on_step_end(step, ctx)
            current = torch.cat([m.mask.reshape(-1) for _, m in pruner.masks.values()])
            assert not (current & ~previous).any()  # a pruned weight never returns
            previous = current
            seen.append(pruner.current)
    assert seen[9] == 0.0  # nothing before start_epoch
    assert pruner.target(10 + 20) == pytest.approx(0.7875)  # half-way through the 40-step window
    assert seen[-1] == 0.9
    assert _selected_stats(pruner)[1] == keep_count(total, 0.9)
    assert len(set(seen)) == 1 + 8  # 0, then one update every 5 steps over 4 epochs


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_trained_magnitude_pruning_hits_exact_counts(scope):
    torch.manual_seed(0)
    data = load_data(DataConfig(name="digits"))
    model = lenet(in_channels=1, input_size=8, width=0.5)
    pruner = MagnitudeModifier(MagnitudeConfig(sparsity=0.75, scope=scope, max_layer_sparsity=0.98))  # see above
    result = Trainer(model, data, TrainConfig(epochs=2, lr=0.05), [pruner], batch_size=64, progress=False).fit()
    assert masked_layers(result.model) == {}  # finalize squashed the masks
    layers = [result.model.features[3], result.model.classifier[1]]
    zeros = [int((layer.weight == 0).sum()) for layer in layers]
    sizes = [layer.weight.numel() for layer in layers]
    if scope == "layer":
        assert zeros == [n - keep_count(n, 0.75) for n in sizes]
    else:
        assert sum(zeros) == sum(sizes) - keep_count(sum(sizes), 0.75)
    assert int((result.model.features[0].weight == 0).sum()) == 0  # first conv left dense


def test_best_epoch_only_counts_once_target_is_reached():
    torch.manual_seed(0)
    data = load_data(DataConfig(name="digits"))
    model = lenet(in_channels=1, input_size=8, width=0.5)
    pruner = GradualMagnitudeModifier(GradualMagnitudeConfig(sparsity=0.9, scope="global", start_epoch=0, end_epoch=3))
    result = Trainer(model, data, TrainConfig(epochs=5, lr=0.05), [pruner], batch_size=64, progress=False).fit()
    assert [r["complete"] for r in result.history] == [False, False, True, True, True]
    assert result.best_epoch >= 2
    weights = torch.cat([result.model.features[3].weight.reshape(-1), result.model.classifier[1].weight.reshape(-1)])
    assert int((weights == 0).sum()) == weights.numel() - keep_count(weights.numel(), 0.9)


def test_zero_epochs_still_reaches_target_at_finalize():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.Linear(16, 3))
    data = load_data(DataConfig(name="digits"))
    pruner = MagnitudeModifier(MagnitudeConfig(sparsity=0.5))
    result = Trainer(model, data, TrainConfig(epochs=0), [pruner], progress=False).fit()
    assert int((result.model[2].weight == 0).sum()) == 4 * 6 * 6 * 16 // 2
