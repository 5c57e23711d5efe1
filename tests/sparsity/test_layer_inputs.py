"""Feature rows of a layer's inputs, the order layers are measured in, and the sequential promise: each layer is
measured on the inputs that the already-pruned layers before it give."""

import pytest
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.sparsity.layer_inputs import feature_issue, feature_rows, layout_order
from slimkit.sparsity.sequential import layer_groups, prune_sequentially


def _patches(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """Receptive fields by explicit slicing, one row per output position, in weight.flatten(1) order."""
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    ph, pw = conv.padding
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    padded = nn.functional.pad(x, (pw, pw, ph, ph), mode=mode)
    rows = []
    for b in range(x.shape[0]):
        for i in range(0, padded.shape[2] - dh * (kh - 1), sh):
            for j in range(0, padded.shape[3] - dw * (kw - 1), sw):
                rows.append(padded[b, :, i:i + dh * (kh - 1) + 1:dh, j:j + dw * (kw - 1) + 1:dw].reshape(-1))
    return torch.stack(rows)


@pytest.mark.parametrize("options", [dict(stride=1, padding=1), dict(stride=2, padding=1, dilation=2),
                                     dict(stride=1, padding=2, padding_mode="reflect"),
                                     dict(padding="same", dilation=2)])
def test_conv_feature_rows_are_the_receptive_fields_the_weight_multiplies(options):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, bias=False, **options)
    x = torch.randn(2, 3, 7, 6)
    rows = feature_rows(conv, x)
    if not isinstance(conv.padding, str):
        assert torch.equal(rows, _patches(conv, x))
    out = conv(x)  # the layer is rows @ W.flatten(1).T, position by position
    assert torch.allclose(rows @ conv.weight.flatten(1).t(), out.permute(0, 2, 3, 1).reshape(-1, 4), atol=1e-5)


def test_linear_feature_rows_are_tokens_and_the_layout_groups_input_channels_per_position():
    x = torch.randn(2, 5, 8)
    assert torch.equal(feature_rows(nn.Linear(8, 3), x), x.reshape(10, 8))
    assert torch.equal(layout_order(torch.zeros(3, 8)), torch.arange(8))
    weight = torch.arange(2 * 3 * 2 * 2).view(2, 3, 2, 2)  # (out, in, kh, kw)
    reordered = weight.flatten(1)[:, layout_order(weight)]
    assert torch.equal(reordered, weight.permute(0, 2, 3, 1).reshape(2, -1))  # in channels consecutive per position


def test_layers_whose_inputs_are_unknown_are_named():
    assert "groups=2" in feature_issue(nn.Conv2d(4, 4, 3, groups=2))
    assert "Conv1d" in feature_issue(nn.Conv1d(4, 4, 3))
    assert feature_issue(nn.Linear(4, 4)) is None and feature_issue(nn.Conv2d(4, 4, 3)) is None


class Attention(nn.Module):
    """q, k and v read one tensor; out reads their product; a residual block around it."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(6, 6) for _ in range(4))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        attended = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2), -1) @ self.v(x)
        return self.head(x + self.out(attended))


def test_layers_reading_one_tensor_form_one_group_in_running_order():
    model = Attention()
    layers = {n: model.get_submodule(n) for n in ("q", "k", "v", "out", "head")}
    groups, calls = layer_groups(layers, lambda: model(torch.randn(2, 3, 6)))
    assert groups == [["q", "k", "v"], ["out"], ["head"]] and set(calls.values()) == {1}


def test_a_layer_that_never_runs_is_named():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    layers = {"0": model[0], "unused": nn.Linear(4, 4)}
    with pytest.raises(SlimkitError, match="unused did not run on the calibration batch"):
        layer_groups(layers, lambda: model(torch.randn(2, 4)))


class SumOfSquares:
    def __init__(self):
        self.total = torch.zeros(())

    def add(self, rows):
        self.total += rows.pow(2).sum()

    def all_reduce(self):
        raise AssertionError("not under DDP")

    def is_finite(self):
        return bool(torch.isfinite(self.total))


def test_each_layer_is_measured_on_the_outputs_of_the_pruned_layers_before_it_and_passes_stop_early():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    batches = [(torch.randn(5, 4),), (torch.randn(3, 4),)]
    layers = {"0": model[0], "2": model[2]}
    measured, head_calls = {}, []
    model[4].register_forward_pre_hook(lambda m, a: head_calls.append(1))

    def prune(name, module, statistic):  # zero the layer: what the next layer sees must be its bias alone
        measured[name] = statistic.total.item()
        with torch.no_grad():
            module.weight.zero_()

    prune_sequentially(model, layers, batches, lambda m, b: m(b[0]), lambda m: SumOfSquares(), prune,
                       all_reduce=False)
    x = torch.cat([b[0] for b in batches])
    assert measured["0"] == pytest.approx(x.pow(2).sum().item())
    pruned_first = torch.relu(model[0].bias).expand(8, 8)  # the first layer's output once its weights are 0
    assert measured["2"] == pytest.approx(pruned_first.pow(2).sum().item())
    assert head_calls == [1]  # the order pass ran the whole model; the groups' passes stopped before the head
