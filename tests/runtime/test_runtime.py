"""The CPU runtime: every kernel against a reference, deployed models against their training graphs."""

import copy
import json

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import slimkit
from slimkit.folding import batchnorm_pairs
from slimkit.models import lenet, resnet20, vgg_small
from slimkit.recipe import build_modifier, parse_stage
from slimkit.runtime import layouts
from slimkit.runtime.eager import binary_kernels
from slimkit.runtime.eager.kernel_modules import PackedBinaryConv2d, SparseConv2d, SparseLinear
from slimkit.sparsity.nm import nm_mask
from slimkit.sparsity.pattern import connectivity_mask, extract_library, pattern_mask
from slimkit.sparsity.topk import layerwise_masks
from slimkit.train import TrainContext

SHAPES = dict(batch=st.integers(1, 3), channels=st.integers(1, 70), out=st.integers(1, 20), size=st.integers(1, 9),
              kernel=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1]),
              seed=st.integers(0, 2**16))


def _fits(size, kernel, pad):
    return size + 2 * pad >= kernel


@settings(max_examples=40, deadline=None)
@given(**SHAPES)
def test_binary_conv_kernel_is_exact(batch, channels, out, size, kernel, stride, pad, seed):
    if not _fits(size, kernel, pad):
        return
    torch.manual_seed(seed)
    x = torch.randn(batch, channels, size, size)
    x[torch.rand_like(x) < 0.2] = 0  # sign(0) = 0 must count as 0, like the padding
    signs = torch.where(torch.rand(out, channels, kernel, kernel) < 0.5, -1.0, 1.0)
    scale, bias = torch.rand(out), torch.randn(out)
    expected = F.conv2d(torch.sign(x), signs, stride=stride, padding=pad) * scale[:, None, None] + bias[:, None, None]
    out_w = (size + 2 * pad - kernel) // stride + 1
    nonzero, positive = binary_kernels.pack_rows(x.numpy(), kernel, stride, pad, out_w, 2)
    weight_bits = binary_kernels.pack_weights(signs.numpy())
    for columns_inner in (True, False):  # both loop orders, whichever binary_conv would pick here
        got = binary_kernels.binary_conv_in_order(nonzero, positive, weight_bits, scale.numpy(), bias.numpy(),
                                                  stride, pad, expected.shape[2], 2, columns_inner)
        assert torch.equal(torch.from_numpy(got), expected), columns_inner


@settings(max_examples=40, deadline=None)
@given(**SHAPES, sparsity=st.floats(0.0, 0.99))
def test_sparse_conv_kernel_matches_conv2d(batch, channels, out, size, kernel, stride, pad, seed, sparsity):
    if not _fits(size, kernel, pad):
        return
    torch.manual_seed(seed)
    layer = nn.Conv2d(channels, out, kernel, stride=stride, padding=pad)
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < sparsity] = 0
    x = torch.randn(batch, channels, size, size)
    with torch.no_grad():
        assert torch.allclose(SparseConv2d(layer)(x), layer(x), atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 70), inputs=st.integers(1, 80), out=st.integers(1, 30), sparsity=st.floats(0.0, 0.99),
       seed=st.integers(0, 2**16))
def test_sparse_linear_kernel_matches_linear(batch, inputs, out, sparsity, seed):
    torch.manual_seed(seed)
    layer = nn.Linear(inputs, out)
    with torch.no_grad():
        layer.weight[torch.rand_like(layer.weight) < sparsity] = 0
    x = torch.randn(batch, inputs)
    with torch.no_grad():
        assert torch.allclose(SparseLinear(layer)(x), layer(x), atol=1e-5, rtol=1e-5)


def test_csr_layout_round_trips():
    weight = torch.randn(5, 4, 3, 3).numpy()
    weight[weight < 0.5] = 0
    weight[1] = 0  # an output channel with no weights at all
    ptr, chan, position, values = layouts.conv_by_output(weight)
    rebuilt = np.zeros_like(weight)
    for o in range(5):
        for e in range(ptr[o], ptr[o + 1]):
            rebuilt[o, chan[e], position[e] // 3, position[e] % 3] += values[e]  # padding entries add 0
        assert (ptr[o + 1] - ptr[o]) % layouts.GROUP == 0
        assert ptr[o + 1] - ptr[o] - np.count_nonzero(weight[o]) < layouts.GROUP
    assert np.array_equal(rebuilt, weight) and np.count_nonzero(values) == np.count_nonzero(weight)


# --- whole models ---------------------------------------------------------------------------------------------

def _binary(model, method):
    modifier = build_modifier(parse_stage({"binarize": {"method": method}}))
    modifier.attach(model, TrainContext(model, epochs=1, steps_per_epoch=1))
    return modifier.finalize(model).eval()


def _randomise_bn(model):
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("method", ["xnor", "irnet", "rbnn", "recu", "siman"])
@pytest.mark.parametrize("arch", ["resnet20", "vgg_small"])
def test_deployed_binary_network_equals_eval_exactly(arch, method):
    torch.manual_seed(0)
    options = {"block": "bireal", "activation": "hardtanh"} if arch == "resnet20" else {}
    model = _randomise_bn(_binary((resnet20 if arch == "resnet20" else vgg_small)(width=0.25, **options), method))
    deployed = slimkit.deploy(model)
    kinds = {e["layer"]: e["choice"] for e in deployed.deploy_report if e["kind"] == "binary"}
    assert kinds and all(choice == "deployed" for choice in kinds.values()), deployed.deploy_report
    assert all(isinstance(deployed.get_submodule(n), PackedBinaryConv2d) for n in kinds)
    x = torch.randn(3, 3, 32, 32)
    x[:, :, :4] = 0  # exact zeros in the input
    with torch.inference_mode():
        assert torch.equal(deployed(x), model(x))


def _sparse(model, kind):
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}
    layers.pop(next(iter(layers)))  # first conv dense
    with torch.no_grad():
        if kind == "unstructured":
            masks = layerwise_masks({n: m.weight.abs() for n, m in layers.items()}, 0.9)
            for n, m in layers.items():
                m.weight.mul_(masks[n])
        elif kind == "pattern":
            convs = {n: m for n, m in layers.items() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)}
            library = extract_library(torch.cat([m.weight.reshape(-1, 9) for m in convs.values()]), 8)
            for m in convs.values():
                m.weight.mul_(connectivity_mask(m.weight, 3.6) & pattern_mask(m.weight, library))
        else:  # 2:4
            for m in layers.values():
                m.weight.mul_(nm_mask(m.weight.abs(), 2, 4))
    return model


@pytest.mark.parametrize("kind", ["unstructured", "pattern", "nm"])
@pytest.mark.parametrize("arch", ["resnet20", "vgg_small", "lenet"])
def test_deployed_sparse_network_equals_eval(arch, kind):
    torch.manual_seed(0)
    if arch == "lenet":
        model, x = lenet(in_channels=1, input_size=28, kernel_size=3), torch.randn(2, 1, 28, 28)
    else:
        model, x = (resnet20 if arch == "resnet20" else vgg_small)(width=0.25), torch.randn(2, 3, 32, 32)
    model = _randomise_bn(_sparse(model, kind)).eval()
    deployed = slimkit.deploy(model)
    report = {e["layer"]: e for e in deployed.deploy_report}
    if kind == "nm":
        assert all(e["choice"] == "dense" and "no CPU speedup path" in e["reason"] for e in report.values()
                   if e["kind"] == "n:m") and any(e["kind"] == "n:m" for e in report.values())
    else:
        assert sum(e["choice"] == "deployed" for e in report.values()) >= (1 if arch == "lenet" else 2)
        assert any(e["kind"] == kind.replace("unstructured", "sparse") for e in report.values())
    with torch.inference_mode():
        expected = model(x)
        assert torch.allclose(deployed(x), expected, atol=1e-5 * float(expected.abs().max()) + 1e-6, rtol=1e-5)


def test_batchnorm_pairs_are_the_layers_only_a_batchnorm_reads():
    assert batchnorm_pairs(lenet(in_channels=1, input_size=28)) == {}
    pairs = batchnorm_pairs(resnet20(width=0.25))
    assert len(pairs) == 19 and pairs["conv1"] == "bn1" and pairs["layer3.2.conv2"] == "layer3.2.bn2"
    binary = _binary(resnet20(width=0.25, block="bireal"), "xnor")  # binary layers pair like float ones
    assert batchnorm_pairs(binary) == pairs

    class Tapped(nn.Module):  # the conv's output is read twice: folding would change the second reader
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    assert batchnorm_pairs(Tapped()) == {}


@pytest.mark.parametrize("form", ["binary", "unstructured"])
def test_deploy_folds_batchnorm_on_request(form):
    torch.manual_seed(0)
    model = resnet20(width=0.25, block="bireal", activation="hardtanh") if form == "binary" else resnet20(width=0.25)
    model = _randomise_bn(_binary(model, "xnor") if form == "binary" else _sparse(model, form)).eval()
    folded = slimkit.deploy(model, fold_batchnorm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())  # all 19 folded
    assert sum("batchnorm_folded" in e for e in folded.deploy_report) == 19
    exact = slimkit.deploy(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in exact.modules()) == 19  # off by default
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        expected = model(x)
        assert torch.allclose(folded(x), expected, atol=1e-5 * float(expected.abs().max()), rtol=1e-4)
        if form == "binary":
            assert torch.equal(exact(x), expected)
        for name, module in folded.named_modules():  # layer by layer: each folded binary layer is BN(conv)
            if isinstance(module, PackedBinaryConv2d):
                layer = model.get_submodule(name)
                layer_in = torch.randn(2, layer.in_channels, 8, 8)
                reference = model.get_submodule(name.replace("conv", "bn"))(layer(layer_in))
                assert torch.allclose(module(layer_in), reference, atol=1e-5, rtol=1e-5)
        # what load_deployed does: the saved choices and options rebuild the same model
        again = slimkit.deploy(model, choices={e["layer"]: e["choice"] for e in folded.deploy_report},
                               **folded.deploy_options)
        assert torch.equal(again(x), folded(x))


def test_channel_pruned_model_runs_as_the_smaller_dense_model():
    from slimkit.channels import prune_channels

    torch.manual_seed(0)
    model = _randomise_bn(resnet20(width=0.5)).eval()
    pruned, _ = prune_channels(copy.deepcopy(model), torch.randn(1, 3, 32, 32), ratio=0.5)
    deployed = slimkit.deploy(pruned, torch.randn(4, 3, 32, 32))
    assert all(e["choice"] == "dense" for e in deployed.deploy_report)
    dense_params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in deployed.parameters()) < 0.4 * dense_params
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(deployed(x), pruned.eval()(x))


def test_results_do_not_depend_on_thread_count():
    torch.manual_seed(0)
    model = _randomise_bn(_sparse(_binary(resnet20(width=0.25, block="bireal"), "xnor"), "unstructured")).eval()
    deployed = slimkit.deploy(model)
    x = torch.randn(4, 3, 32, 32)
    outputs = []
    torch_threads = torch.get_num_threads()
    for threads in (1, 2):
        for m in deployed.modules():
            if hasattr(m, "threads"):
                m.threads = threads
        with torch.inference_mode():
            outputs.append(deployed(x))
        assert torch.get_num_threads() == torch_threads  # the kernels' numba threads did not leak into torch
    assert numba.config.NUMBA_NUM_THREADS >= 1 and torch.equal(outputs[0], outputs[1])


@pytest.mark.slow
def test_deployed_model_saves_and_loads(tmp_path, digits_recipe):
    digits_recipe["model"] = {"name": "lenet", "width": 0.5, "options": {"kernel_size": 3}}
    digits_recipe["stages"] = [{"prune": {"method": "magnitude", "sparsity": 0.9, "scope": "layer"}}]
    run = slimkit.run_recipe(slimkit.Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    x = torch.randn(2, 1, 8, 8)
    deployed = slimkit.deploy(run.model)
    path = slimkit.save_deployed(deployed, tmp_path / "run" / "model.pt", tmp_path / "deployed.pt")
    loaded = slimkit.load_deployed(path)
    assert [e["choice"] for e in loaded.deploy_report] == [e["choice"] for e in deployed.deploy_report]
    assert any(isinstance(m, SparseConv2d | SparseLinear) for m in loaded.modules())
    with torch.inference_mode():
        assert torch.equal(loaded(x), deployed(x))


@pytest.mark.slow
def test_bench_cli_writes_json_and_markdown(tmp_path, digits_recipe, monkeypatch, capsys):
    from slimkit.cli import main
    from slimkit.environment import ALLOCATOR_ENV

    for key, value in ALLOCATOR_ENV.items():  # already in force, so the command does not re-execute itself
        monkeypatch.setenv(key, value)
    digits_recipe["stages"] = [{"prune": {"method": "magnitude", "sparsity": 0.95, "scope": "layer"}}]
    slimkit.run_recipe(slimkit.Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    code = main(["bench", str(tmp_path / "run"), "--batch-sizes", "1", "8", "--repeats", "3", "--no-compile"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "bench.json").read_text())
    assert set(results["batches"]) == {"1", "8"}
    assert results["cpu_model"] and isinstance(results["isa"], list) and results["threads"] >= 1
    dense = ("eager", "frozen", "ort_fp32", "ort_int8", "openvino_fp32", "openvino_int8")
    for r in results["batches"].values():
        ms = r["latency_ms"]
        assert {"eager", "deployed", "frozen", "ort_fp32", "ort_int8"} <= set(ms)
        fastest = min((f for f in dense if f in ms), key=lambda f: ms[f]["median"])  # found independently
        best = r["deployed_vs"]["best_dense"]
        assert best["baseline"] == fastest
        assert best["speedup"] == pytest.approx(ms[fastest]["median"] / ms["deployed"]["median"])
        assert r["deployed_vs"]["best_int8"]["baseline"] in ("ort_int8", "openvino_int8")
        choices = {e["layer"]: e for e in r["layers"]}
        assert choices["features.0"]["reason"] == "no zero weights"
        assert all("dense_ms" in choices[n] and choices[n]["choice"] in ("deployed", "dense")
                   for n in ("features.3", "classifier.1"))
        # the OpenVINO artifact with slimkit's operators, against the same best dense engine, with its profile
        assert r["engine_vs"]["best_dense"]["baseline"] == fastest
        assert r["engine_vs"]["best_dense"]["speedup"] == pytest.approx(ms[fastest]["median"] / ms["engine"]["median"])
        assert any(p["node"] == "SparseConv2d" and p["nodes"] == 1 for p in r["engine_profile"]), r["engine_profile"]
        # every engine form names the precision it computed in: the artifact and the *_fp32/int8 forms pinned
        # to fp32, a form at the CPU's default (openvino_bf16, openvino_int8+bf16) named by it, onnxruntime fp32
        assert set(r["precision"]) == {f for f in ms if f == "engine" or f.startswith(("openvino_", "ort_"))}
        assert all(r["precision"][f] == "fp32" for f in ms if f.startswith("ort_"))
        assert r["precision"]["engine"] == r["precision"]["openvino_fp32"] == r["precision"]["openvino_int8"] == "fp32"
        assert all(r["precision"][f] == f.rsplit("_", 1)[1].rsplit("+", 1)[-1] for f in ms
                   if f.startswith("openvino_") and f not in ("openvino_fp32", "openvino_int8"))
    engine_layers = {line["layer"]: line["engine"] for line in results["engine"]["slimkit_layers"]}
    assert engine_layers["features.3"] == "slimkit::SparseConv2d" and "features.0" not in engine_layers
    report = (tmp_path / "run" / "bench.md").read_text()
    assert "| layer | kind | runs |" in report and "CPU: " in report and "best dense engine" in report
    assert "Where the engine's time goes at batch 8" in report
    assert "| 8 | engine | fp32 |" in report and "| 1 | openvino_fp32 | fp32 |" in report
    assert "| 1 | eager |  |" in report  # torch forms: what their name says


def _pattern_weight(out, channels, ratio, seed, group=1):
    torch.manual_seed(seed)
    weight = torch.randn(out, channels, 3, 3)
    library = extract_library(weight, 8)
    return weight * (connectivity_mask(weight, ratio, group) & pattern_mask(weight, library, group))


@settings(max_examples=30, deadline=None)
@given(out=st.integers(1, 12), channels=st.integers(1, 12), ratio=st.floats(1.0, 6.0), seed=st.integers(0, 2**16))
def test_fkw_storage_round_trips(out, channels, ratio, seed):
    from slimkit.runtime.eager.pattern_kernels import fkw_decode, fkw_encode

    weight = _pattern_weight(out, channels, ratio, seed)
    fkw = fkw_encode(weight.numpy())
    assert np.array_equal(fkw_decode(fkw), weight.numpy())
    assert sorted(fkw.reorder.tolist()) == list(range(out))  # a permutation
    kept = (weight.reshape(out, channels, 9) != 0).any(-1)
    assert int(fkw.stride.sum()) == int(kept.sum()) == len(fkw.index)
    counts = kept.sum(1)[torch.as_tensor(fkw.reorder, dtype=torch.long)]
    assert bool((counts[1:] <= counts[:-1]).all())  # filters ordered by kernel count
    x = torch.randn(2, channels, 6, 6)
    reordered = F.conv2d(x, weight[torch.as_tensor(fkw.reorder, dtype=torch.long)], padding=1)
    inverse = torch.argsort(torch.as_tensor(fkw.reorder, dtype=torch.long))
    assert torch.allclose(reordered[:, inverse], F.conv2d(x, weight, padding=1), atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), out=st.integers(1, 12), channels=st.integers(1, 12), size=st.integers(1, 9),
       stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1]), seed=st.integers(0, 2**16))
def test_pattern_conv_kernel_matches_conv2d(batch, out, channels, size, stride, pad, seed):
    from slimkit.runtime.eager.kernel_modules import PatternConv2d

    if size + 2 * pad < 3:
        return
    layer = nn.Conv2d(channels, out, 3, stride=stride, padding=pad)
    with torch.no_grad():
        layer.weight.copy_(_pattern_weight(out, channels, 3.6, seed))
    x = torch.randn(batch, channels, size, size)
    with torch.no_grad():
        assert torch.allclose(PatternConv2d(layer)(x), layer(x), atol=1e-5, rtol=1e-5)


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 3), out=st.integers(1, 24), channels=st.integers(1, 12), group=st.integers(4, 9),
       size=st.integers(1, 9), stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1]),
       seed=st.integers(0, 2**16))
def test_grouped_pattern_conv_runs_filter_groups_as_gemms(batch, out, channels, group, size, stride, pad, seed):
    """Filter-grouped pattern layers take the GEMM path (group sizes not multiples of 4, empty groups and
    fully pruned filters included) and match conv2d."""
    from slimkit.runtime.eager.kernel_modules import PatternConv2d
    from slimkit.runtime.eager.pattern_kernels import TILE, group_filters

    if size + 2 * pad < 3:
        return
    weight = _pattern_weight(out, channels, 2.5, seed, group)
    groups = group_filters(weight.numpy())
    assert (np.diff(groups.group_ptr) % TILE == 0).all()
    assert sorted(groups.slots[groups.slots < out].tolist()) == list(range(out))  # every filter once
    for g in range(len(groups.group_ptr) - 1):  # each group's slots hold exactly its filters' weights
        rows = slice(groups.row_ptr[g], groups.row_ptr[g + 1])
        kept = torch.as_tensor(groups.chan[rows] * 9 + groups.tap[rows], dtype=torch.long)
        for slot in range(groups.group_ptr[g], groups.group_ptr[g + 1]):
            if groups.slots[slot] < out:
                flat = weight.reshape(out, -1)[groups.slots[slot]]
                assert torch.equal(flat[kept], torch.from_numpy(groups.weights[slot, :len(kept)]))
                assert int((flat != 0).sum()) == int((flat[kept] != 0).sum())
    layer = nn.Conv2d(channels, out, 3, stride=stride, padding=pad)
    with torch.no_grad():
        layer.weight.copy_(weight)
    deployed = PatternConv2d(layer)
    assert deployed.grouped == (groups.mean_filters >= 4)
    x = torch.randn(batch, channels, size, size)
    with torch.no_grad():
        assert torch.allclose(deployed(x), layer(x), atol=1e-5, rtol=1e-5)


def test_deploy_reports_filter_grouped_pattern_layers():
    torch.manual_seed(0)
    model = vgg_small(width=0.125).eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)][1:]
    with torch.no_grad():
        for m in convs:
            m.weight.copy_(_pattern_weight(m.out_channels, m.in_channels, 3.6, 0, group=4))
    deployed = slimkit.deploy(model)
    kinds = {e["layer"]: e["kind"] for e in deployed.deploy_report}
    assert kinds["body.conv1"] == "pattern, filter groups" and kinds["body.conv5"] == "pattern, filter groups"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(deployed(x), model(x), atol=1e-4, rtol=1e-4)
