"""slimkit's operators inside OpenVINO: the exported artifact against the training graph, every instruction
set the CPU has, epilogue fusion, and loading with plain OpenVINO."""

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from slimkit.binary.binarizers import ActivationBinarizer, XnorWeight
from slimkit.binary.functions import ClippedSTE, sign
from slimkit.binary.layers import BinaryConv2d
from slimkit.errors import SlimkitError
from slimkit.models import resnet20, vgg_small
from slimkit.recipe import build_modifier, parse_stage
from slimkit.runtime.engine import build
from slimkit.runtime.engine.artifact import export_folder
from slimkit.runtime.engine.dense_engines import OpenVinoModel
from slimkit.runtime.engine.export import export_openvino, openvino_core
from slimkit.runtime.engine.form import engine_form
from slimkit.runtime.engine.operators import sign_bits, signs_from_bits
from slimkit.sparsity.pattern import connectivity_mask, extract_library, pattern_mask
from slimkit.sparsity.topk import layerwise_masks
from slimkit.train import TrainContext

pytest.importorskip("openvino")


def _layer(channels, out, kernel=3, stride=1, pad=1, dilation=1, zero="zero"):
    layer = BinaryConv2d(channels, out, kernel, stride=stride, padding=pad, dilation=dilation, bias=True,
                         weight_binarizer=XnorWeight(), input_binarizer=ActivationBinarizer(ClippedSTE(), zero=zero))
    with torch.no_grad():
        layer.bias.normal_()
    return layer.eval()


def _engine(model, tmp_path, shape, threads=2):
    info = export_openvino(model, tmp_path / "model.xml", shape[1:])
    return OpenVinoModel(Path(info["model"]), shape, threads, core=openvino_core()), info


def _input(shape, seed):
    torch.manual_seed(seed)
    x = torch.randn(*shape)
    x[torch.rand_like(x) < 0.2] = 0  # sign(0) = 0 must count as 0, like the padding
    return x


@settings(max_examples=16, deadline=None)
@given(batch=st.integers(1, 3), channels=st.integers(1, 140), out=st.integers(1, 21), size=st.integers(3, 9),
       kernel=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1, 2]),
       zero=st.sampled_from(["zero", "positive"]), seed=st.integers(0, 2**16))
def test_binary_operator_equals_the_layer_exactly(tmp_path_factory, batch, channels, out, size, kernel, stride, pad,
                                                  zero, seed):
    """Under either sign(0) convention: two planes for sign(0) = 0, one plane plus the padding recount for +1."""
    torch.manual_seed(seed)
    layer = _layer(channels, out, kernel, stride, pad, zero=zero)
    x = _input((batch, channels, size, size), seed)
    engine, info = _engine(nn.Sequential(layer), tmp_path_factory.mktemp("op"), tuple(x.shape))
    assert [line["engine"] for line in info["slimkit_layers"]] == ["slimkit::BinaryConv2d"]
    with torch.no_grad():
        assert torch.equal(engine(x), layer(x))


@settings(max_examples=10, deadline=None)
@given(batch=st.integers(1, 3), channels=st.integers(1, 40), out=st.integers(1, 21), size=st.integers(3, 9),
       kernel=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1]),
       sparsity=st.floats(0.7, 0.99), seed=st.integers(0, 2**16))
def test_sparse_operator_matches_conv2d(tmp_path_factory, batch, channels, out, size, kernel, stride, pad, sparsity,
                                        seed):
    torch.manual_seed(seed)
    layer = nn.Conv2d(channels, out, kernel, stride=stride, padding=pad).eval()
    with torch.no_grad():
        layer.weight.mul_(layerwise_masks({"w": layer.weight.abs()}, sparsity)["w"])
    x = torch.randn(batch, channels, size, size)
    engine, info = _engine(nn.Sequential(layer), tmp_path_factory.mktemp("sparse"), tuple(x.shape))
    assert [line["engine"] for line in info["slimkit_layers"]] == ["slimkit::SparseConv2d"]
    with torch.no_grad():
        torch.testing.assert_close(engine(x), layer(x), rtol=1e-5, atol=1e-5)


@settings(max_examples=8, deadline=None)
@given(rows=st.sampled_from([(1,), (3,), (2, 5), (17,)]), features=st.integers(1, 70), out=st.integers(1, 40),
       sparsity=st.floats(0.7, 0.99), relu=st.booleans(), seed=st.integers(0, 2**16))
def test_sparse_linear_operator_matches_linear(tmp_path_factory, rows, features, out, sparsity, relu, seed):
    """Batch 1 (gathered dots) and larger batches (batch-minor rows), any leading shape, ReLU fused or not."""
    torch.manual_seed(seed)
    layer = nn.Linear(features, out).eval()
    with torch.no_grad():
        layer.weight.mul_(layerwise_masks({"w": layer.weight.abs()}, sparsity)["w"])
    model = nn.Sequential(layer, *([nn.ReLU()] if relu else []))
    x = torch.randn(*rows, features)
    engine, info = _engine(model, tmp_path_factory.mktemp("linear"), tuple(x.shape))
    line = info["slimkit_layers"][0]
    assert line["engine"] == "slimkit::SparseLinear" and line["fused"] == (["1"] if relu else [])
    with torch.no_grad():
        torch.testing.assert_close(engine(x), model(x), rtol=1e-5, atol=1e-5)


def _pruned(arch, kind):
    torch.manual_seed(0)
    model = (resnet20 if arch == "resnet20" else vgg_small)(width=0.5).eval()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    convs.pop(next(iter(convs)))  # the stem stays dense
    with torch.no_grad():
        if kind == "unstructured":
            masks = layerwise_masks({n: m.weight.abs() for n, m in convs.items()}, 0.9)
            for n, m in convs.items():
                m.weight.mul_(masks[n])
        else:
            library = extract_library(torch.cat([m.weight.reshape(-1, 9) for m in convs.values()]), 8)
            for m in convs.values():
                m.weight.mul_(connectivity_mask(m.weight, 3.6) & pattern_mask(m.weight, library))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model, list(convs)


@pytest.mark.parametrize("kind", ["unstructured", "pattern"])
@pytest.mark.parametrize("arch", ["resnet20", "vgg_small"])
def test_sparse_network_in_openvino_matches_eval(tmp_path, arch, kind):
    model, pruned = _pruned(arch, kind)
    x = torch.randn(2, 3, 32, 32)
    engine, info = _engine(model, tmp_path, tuple(x.shape))
    lines = {line["layer"]: line for line in info["slimkit_layers"]}
    assert all(lines[n]["engine"] == "slimkit::SparseConv2d" for n in pruned), lines
    fused = {n: lines[n]["fused"] for n in pruned}
    if arch == "resnet20":  # BN, then the residual add and ReLU after a block's second conv
        assert all(f == [n.replace("conv", "bn"), n.replace("conv", "act")] for n, f in fused.items()
                   if n.endswith("conv1")), fused
        assert all(f[0] == n.replace("conv", "bn") and len(f) == 3 for n, f in fused.items() if n.endswith("conv2"))
    else:  # a max-pool between conv and BN stops the fusion
        assert fused["body.conv2"] == ["body.bn2", "body.act2"] and fused["body.conv1"] == [], fused
    with torch.no_grad():
        torch.testing.assert_close(engine(x), model(x), rtol=1e-4, atol=1e-4)


def _bnn(arch, method="xnor"):
    torch.manual_seed(0)
    options = {"block": "bireal", "activation": "hardtanh"} if arch == "resnet20" else {}
    model = (resnet20 if arch == "resnet20" else vgg_small)(width=0.5, **options)
    modifier = build_modifier(parse_stage({"binarize": {"method": method}}))
    modifier.attach(model, TrainContext(model, epochs=1, steps_per_epoch=1))
    model = modifier.finalize(model).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("method", ["xnor", "rbnn"])
@pytest.mark.parametrize("arch", ["resnet20", "vgg_small"])
def test_binary_network_in_openvino_matches_eval(tmp_path, arch, method):
    model = _bnn(arch, method)
    x = _input((2, 3, 32, 32), 1)
    engine, info = _engine(model, tmp_path, tuple(x.shape))
    binary = [n for n, m in model.named_modules() if isinstance(m, BinaryConv2d)]
    assert [line["layer"] for line in info["slimkit_layers"]] == binary
    assert all(line["engine"] == "slimkit::BinaryConv2d" for line in info["slimkit_layers"])
    with torch.no_grad():
        # The sums are exact; BatchNorm folded into the epilogue rounds once instead of twice
        torch.testing.assert_close(engine(x), model(x), rtol=1e-4, atol=1e-4)
    reads_bits = [line["layer"] for line in info["slimkit_layers"] if "input" in line]
    if arch == "resnet20":  # Bi-Real blocks: BN, the block's residual add and the hardtanh fused into both convs
        fused = {line["layer"]: line["fused"] for line in info["slimkit_layers"]}
        assert all(len(f) == 3 and f[0].endswith(("bn1", "bn2")) for f in fused.values()), fused
        # each binary conv writes its output's sign bits for the next one, which reads no floats (RBNN
        # standardises its inputs per sample, so its layers must read floats)
        assert reads_bits == (binary[1:] if method == "xnor" else []), reads_bits
    else:  # each 2x2 max pool, the BatchNorm after it and the ReLU fused: the binary convs hand each other bits
        pools = [line["fused"] for line in info["slimkit_layers"] if line["fused"][0].startswith("body.pool")]
        assert pools == [[f"body.{op}{i}" for op in ("pool", "bn", "act")] for i in (1, 3, 5)], pools
        assert reads_bits == (binary[1:] if method == "xnor" else []), reads_bits


@pytest.mark.parametrize("zero", ["zero", "positive"])
def test_sign_bits_round_trip_across_words(zero):
    y = torch.randn(2, 70, 3, 5)  # 70 channels: a full word and a partial one
    y[:, :, 0, 0] = 0
    bits = sign_bits(y, zero)
    assert bits.shape == (2, 2, 2, 3, 5) and bits.dtype == torch.int64
    assert torch.equal(signs_from_bits(bits, 70), sign(y, zero))
    # channel c is bit c % 64 of word c // 64 of the positive plane (index 1)
    assert bool((bits[0, 1, 1, 1, 2] >> 5) & 1) == bool(y[0, 69, 1, 2] > 0)


def test_fusion_stops_where_another_op_reads_the_value():
    torch.manual_seed(0)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = _layer(8, 8)
            self.bn = nn.BatchNorm2d(8).eval()
            self.act = nn.Hardtanh()

        def forward(self, x):
            y = self.bn(self.conv(x))
            return self.act(y + x) * y  # y is read twice: BN fuses, the add may not

    model = Twice().eval()
    model.bn.running_mean.uniform_(-1, 1)
    engine_model, lines = engine_form(model, (8, 6, 6))
    assert lines[0]["fused"] == ["bn"]
    x = _input((2, 8, 6, 6), 3)
    with torch.no_grad():
        torch.testing.assert_close(engine_model(x), model(x), rtol=1e-5, atol=1e-5)


class _Broadcast(nn.Module):
    """Adds a per-channel tensor and the output to itself: neither is a residual of the output's shape."""

    def __init__(self):
        super().__init__()
        self.conv = _layer(8, 8)
        self.bn = nn.BatchNorm2d(8).eval()
        self.offset = nn.Parameter(torch.randn(1, 8, 1, 1))
        self.other = _layer(8, 8)

    def forward(self, x):
        y = self.bn(self.conv(x)) + self.offset
        z = self.other(x)
        return y + (z + z)


def test_a_broadcast_add_or_a_self_add_is_never_fused_as_a_residual(tmp_path):
    model = _Broadcast().eval()
    model.bn.running_mean.uniform_(-1, 1)
    _, lines = engine_form(model, (8, 6, 6))
    assert {line["layer"]: line["fused"] for line in lines} == {"conv": ["bn"], "other": []}
    x = _input((2, 8, 6, 6), 6)
    engine, _ = _engine(model, tmp_path, tuple(x.shape))
    with torch.no_grad():
        torch.testing.assert_close(engine(x), model(x), rtol=1e-5, atol=1e-5)


def test_layer_the_operator_cannot_take_stays_exact_and_says_why(tmp_path):
    model = nn.Sequential(_layer(8, 8, dilation=2, pad=2))
    x = _input((1, 8, 9, 9), 4)
    engine, info = _engine(model, tmp_path, tuple(x.shape))
    assert info["slimkit_layers"][0]["engine"] == "OpenVINO (the training graph's ops)"
    assert "dilation" in info["slimkit_layers"][0]["reason"]
    with torch.no_grad():
        torch.testing.assert_close(engine(x), model(x), rtol=1e-5, atol=1e-5)


def test_artifact_loads_in_plain_openvino_and_leaves_no_temporary_files(tmp_path):
    import openvino as ov

    model = nn.Sequential(_layer(16, 8), nn.BatchNorm2d(8).eval(), nn.ReLU())
    x = _input((2, 16, 8, 8), 5)
    info = export_openvino(model, tmp_path / "model.xml", (16, 8, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]
    core = ov.Core()
    core.add_extension(info["library"])
    compiled = core.compile_model(core.read_model(str(tmp_path / "model.xml")), "CPU")
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(compiled(x.numpy())[0]), model(x), rtol=1e-5, atol=1e-5)
    assert json.dumps(info)  # the summary is plain data


def test_library_name_carries_a_digest_of_sources_compiler_and_engine():
    path = build.library_path()
    assert path.exists() and path.name.startswith("libslimkit_openvino-")
    assert build.build() == path  # already built: nothing recompiled, same file


def test_the_old_engine_ops_path_still_gives_every_public_name_and_warns_where_it_moved(monkeypatch):
    from slimkit.runtime.engine import artifact, export, form, profile

    monkeypatch.delitem(sys.modules, "slimkit.runtime.engine_ops", raising=False)  # the warning comes on import
    with pytest.warns(DeprecationWarning, match=r"slimkit\.runtime\.engine\.export"):
        old = importlib.import_module("slimkit.runtime.engine_ops")
    moved = {"engine_form": form, "runs_slimkit_operators": form, "export_openvino": export, "export_folder": artifact,
             "openvino_core": export, "node_times": profile, "profile_openvino": profile}
    assert sorted(old.__all__) == sorted(moved)
    for name, module in moved.items():
        assert getattr(old, name) is getattr(module, name), name


def test_a_warning_in_slimkits_cpp_fails_the_build(tmp_path):
    source = tmp_path / "operator.cpp"
    source.write_text("int twice(int x, int unused) { int spare; return 2 * x; }\n")
    with pytest.raises(SlimkitError, match=r"unused"):
        build._run(["g++", *build.FLAGS, "-c", str(source), "-o", str(tmp_path / "operator.o")])


def test_build_refuses_kernels_whose_code_the_linker_would_share_across_instruction_sets(tmp_path):
    # An out-of-line std::vector member in an AVX-512 object is a weak symbol: the linker may keep that copy for
    # the whole library, and an AVX2-only CPU then dies with SIGILL in a call from the AVX2 kernels.
    source = tmp_path / "kernels.cpp"
    source.write_text("#include <vector>\nnamespace slimkit { namespace avx2 {\n"
                      "int grow(std::vector<int>& v, unsigned long n) { v.resize(n); return v[0]; }\n}}\n")
    shared, own = tmp_path / "shared.o", tmp_path / "own.o"
    subprocess.run(["g++", "-O2", "-c", str(source), "-o", str(shared)], check=True)
    with pytest.raises(SlimkitError, match=r"avx2 kernels define code.*std::vector<int"):
        build._refuse_shared_code(shared, "avx2")
    source.write_text("namespace slimkit { namespace avx2 {\n"
                      "template <typename T> struct Box { T v; T get() const; };\n"
                      "template <typename T> T Box<T>::get() const { return v; }\n"
                      "int grow(int n) { return Box<int>{n}.get(); }\n}}\n")
    subprocess.run(["g++", "-O0", "-c", str(source), "-o", str(own)], check=True)
    build._refuse_shared_code(own, "avx2")  # weak, but inside its own namespace: no other build shares it


PLAIN_OPENVINO = """
import os, sys, numpy, openvino
if sys.argv[2] != "default":  # a CPU whose OpenVINO defaults to another precision (bf16 on Zen 4, Sapphire Rapids)
    class Core(openvino.Core):
        def __init__(self):
            super().__init__()
            self.set_property("CPU", {"INFERENCE_PRECISION_HINT": sys.argv[2]})
    openvino.Core = Core
os.chdir(sys.argv[1])
x = numpy.load("x.npy")
for line in __import__("json").load(open("engine.json"))["load"]:  # the folder's own load lines, as written
    exec(line)
numpy.save("y.npy", compiled(x)[0])
print(compiled.get_property("INFERENCE_PRECISION_HINT"))
"""


def _plain_openvino(folder: Path, x: torch.Tensor, default: str = "default") -> torch.Tensor:
    """`x` through the exported folder as plain OpenVINO runs it by its engine.json load lines (digest check
    included), in a process of its own whose OpenVINO defaults to `default` precision."""
    import numpy as np

    np.save(folder / "x.npy", x.numpy())
    try:
        done = subprocess.run([sys.executable, "-c", PLAIN_OPENVINO, str(folder), default], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.strip() == "<Type: 'float32'>", done.stdout  # pinned, whatever the default
        return torch.from_numpy(np.load(folder / "y.npy"))
    finally:
        (folder / "x.npy").unlink(missing_ok=True)
        (folder / "y.npy").unlink(missing_ok=True)


def test_the_load_lines_compute_in_fp32_on_a_cpu_whose_openvino_defaults_to_bf16(tmp_path):
    """The artifact is exact where OpenVINO's default precision is bf16: its load lines pin f32 (the default is
    forced to bf16 here, so this holds on any CPU: AVX2-only CPUs keep f32, which the pin changes nothing in)."""
    import openvino as ov

    model = _bnn("resnet20")
    x = _input((2, 3, 32, 32), 5)
    export_folder(model, tmp_path / "folder", (3, 32, 32), threads=2)
    with torch.no_grad():
        torch.testing.assert_close(_plain_openvino(tmp_path / "folder", x, "bf16"), model(x), rtol=1e-4, atol=1e-4)
    unpinned = openvino_core().compile_model(openvino_core().read_model(str(tmp_path / "folder" / "model.xml")),
                                             "CPU", {"INFERENCE_PRECISION_HINT": "bf16"})
    if unpinned.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16:  # where OpenVINO runs bf16 at all
        with torch.no_grad():  # the pin is what made the difference
            assert (torch.from_numpy(unpinned(x.numpy())[0]) - model(x)).abs().max() > 1e-3


def test_export_command_writes_a_folder_plain_openvino_runs(tmp_path, digits_recipe, capsys):

    import slimkit
    from slimkit.cli import main

    digits_recipe["stages"] = [{"prune": {"method": "magnitude", "sparsity": 0.95, "scope": "layer"}}]
    slimkit.run_recipe(slimkit.Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    assert main(["export", str(tmp_path / "run")]) == 0, capsys.readouterr().err  # auto: openvino here
    printed = capsys.readouterr().out
    folder = tmp_path / "run" / "engine"
    assert sorted(p.name for p in folder.iterdir()) == ["engine.json", "libslimkit_openvino.so", "model.bin",
                                                        "model.xml"]
    manifest = json.loads((folder / "engine.json").read_text())
    assert manifest["choice"]["chosen"] in printed and "whole model, batch 1" in printed
    lines = {line["layer"]: line for line in manifest["slimkit_layers"]}
    assert {"features.3", "classifier.1"} <= set(lines)  # the pruned layers are candidates, each with its times
    assert all("slimkit_ms" in line["measured"] and line["reason"] for line in lines.values())
    model = slimkit.load(tmp_path / "run" / "model.pt").eval()
    x = torch.rand(4, *manifest["input_shape"])
    with torch.no_grad():
        torch.testing.assert_close(_plain_openvino(folder, x), model(x), rtol=1e-4, atol=1e-4)
    assert main(["export", str(tmp_path / "run"), "--engine", "onnx", "--int8"]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "run" / "model-int8.onnx").exists() and "quantize_static" in printed and "QLinearConv" in printed
    assert main(["export", str(tmp_path / "run"), "--engine", "openvino", "--int8"]) == 2
    assert "ONNX Q/DQ" in capsys.readouterr().err


def test_a_run_with_measure_engines_times_its_artifact_against_every_dense_engine(tmp_path, digits_recipe):
    import slimkit
    from slimkit.runtime.bench import DENSE_FP32, DENSE_INT8

    digits_recipe["stages"] = [{"prune": {"method": "magnitude", "sparsity": 0.9, "scope": "layer"}}]
    digits_recipe["measure"] = {"engines": True, "batch_sizes": [1, 8], "repeats": 3}
    run = slimkit.run_recipe(slimkit.Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    engine = run.metrics["engine"]
    assert sorted(p.name for p in (tmp_path / "run" / "engine").iterdir()) == ["batch-1", "batch-8"]
    for batch in ("batch-1", "batch-8"):  # the deployable folder per batch size, library included
        assert sorted(p.name for p in (tmp_path / "run" / "engine" / batch).iterdir()) == [
            "engine.json", "libslimkit_openvino.so", "model.bin", "model.xml"]
    assert set(engine["batches"]) == {"1", "8"}
    for r in engine["batches"].values():
        dense = {k: v for k, v in r["latency_ms"].items() if k in DENSE_FP32 + DENSE_INT8}
        assert {"ort_fp32", "ort_int8", "openvino_fp32", "openvino_int8"} <= set(dense)
        fastest = min(dense, key=lambda k: dense[k]["median"])  # found independently
        best = r["engine_vs"]["best_dense"]
        assert best["baseline"] == fastest
        assert best["speedup"] == pytest.approx(dense[fastest]["median"] / r["latency_ms"]["engine"]["median"])
        assert r["precision"]["engine"] == "fp32" and r["choice"]["chosen"] in r["choice"]["artifacts_ms"]
        operator_nodes = sum(p["nodes"] for p in r["engine_profile"] if p["node"] in ("SparseConv2d", "SparseLinear"))
        assert operator_nodes == r["choice"]["operators"]  # one node per layer the choice put on slimkit's operator
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## In the engines users deploy with" in report and "in engines (dense: best of" in report
    assert ("speed-up" in report) or ("slower than the dense engine" in report)


def test_sign_of_zero_positive_trains_and_deploys_exactly(tmp_path):
    import slimkit

    model = _bnn("resnet20")
    modifier = build_modifier(parse_stage({"binarize": {"method": "xnor", "zero": "positive"}}))
    torch.manual_seed(0)
    positive = (resnet20)(width=0.5, block="bireal", activation="hardtanh")
    modifier.attach(positive, TrainContext(positive, epochs=1, steps_per_epoch=1))
    positive = modifier.finalize(positive).eval()
    binarizers = [m.input_binarizer for m in positive.modules() if isinstance(m, BinaryConv2d)]
    assert binarizers and all(b.zero == "positive" for b in binarizers)
    x = torch.zeros(1, 4, 3, 3)
    assert torch.equal(binarizers[0](x), torch.ones_like(x))  # sign(0) = +1; the papers' convention gives 0
    assert torch.equal(next(m.input_binarizer for m in model.modules() if isinstance(m, BinaryConv2d))(x), x)
    x = _input((2, 3, 32, 32), 7)
    with torch.inference_mode():
        assert torch.equal(slimkit.deploy(positive)(x), positive(x))  # the numba kernels, exact
    engine, _ = _engine(positive, tmp_path, tuple(x.shape))
    with torch.no_grad():
        torch.testing.assert_close(engine(x), positive(x), rtol=1e-4, atol=1e-4)


def test_a_model_the_engine_cannot_take_still_saves_its_run_and_says_why(tmp_path, digits_recipe, monkeypatch):
    import slimkit
    from slimkit.errors import SlimkitError

    def refuse(*args, **kwargs):
        raise SlimkitError("torch.fx could not trace the model to fuse the engine operators' epilogues: because")

    monkeypatch.setattr("slimkit.runtime.bench.engine_versus_dense", refuse)
    digits_recipe["measure"] = {"engines": True, "batch_sizes": [1], "repeats": 2}
    run = slimkit.run_recipe(slimkit.Recipe.from_dict(digits_recipe), tmp_path / "run", progress=False)
    assert run.metrics["engine"] == {"error": "torch.fx could not trace the model to fuse the engine operators' "
                                              "epilogues: because"}
    assert (tmp_path / "run" / "model.pt").is_file()  # the trained model is not lost to a measurement
    report = (tmp_path / "run" / "report.md").read_text()
    assert "could not be deployed in an engine: torch.fx could not trace" in report
