"""Runs one operator family's exactness checks in this process and prints a JSON line: whether every output
matched its reference and which kernels the operators ran (engine/build.kernel_choices). test_kernel_choice.py
runs it once per kernel with SLIMKIT_KERNEL naming that kernel, so every kernel the CPU can run is checked
whatever the tuner would have chosen.

    python tests/runtime/kernel_check.py binary|sparse|int8|int8-linear FOLDER
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parents[1]))

from runtime.test_engine_ops import _engine, _input, _layer
from runtime.test_quant_linear import check_cases
from runtime.test_quant_sparse import _block_sparse_int8, _steps
from slimkit.models import resnet20
from slimkit.quant.int8_graph import int8_graph
from slimkit.runtime.engine import build
from slimkit.runtime.engine.dense_engines import OpenVinoModel
from slimkit.runtime.engine.export import export_openvino, openvino_core


def binary(folder: Path) -> bool:
    """Binary convs (both sign conventions, channel counts around word boundaries, a strided one) equal the
    training layer bit for bit, and so do those with a fused 2x2 max pool (an odd side: the pool's floor); with
    a BatchNorm of negative scale before the pool (the operator then keeps each window's smallest sum) and one
    after it, within float rounding (the BatchNorms fold)."""
    ok = []
    for (channels, out, size, stride), zero in itertools.product(
            ((16, 16, 12, 1), (70, 9, 7, 2), (130, 64, 5, 1), (3, 33, 6, 1)), ("zero", "positive")):
        layer = _layer(channels, out, 3, stride, 1, zero=zero)
        x = _input((2, channels, size, size), channels)
        engine, _ = _engine(nn.Sequential(layer), folder / f"{channels}-{zero}", tuple(x.shape))
        with torch.no_grad():
            ok.append(torch.equal(engine(x), layer(x)))
    for channels, out, size in ((16, 16, 36), (70, 9, 7)):  # 18 pooled columns: two chunks of 16 in AVX-512
        torch.manual_seed(channels)
        pooled = nn.Sequential(_layer(channels, out), nn.MaxPool2d(2)).eval()
        folded = nn.Sequential(_layer(channels, out), nn.BatchNorm2d(out), nn.MaxPool2d(2), nn.BatchNorm2d(out),
                               nn.ReLU()).eval()
        with torch.no_grad():
            for bn in (folded[1], folded[3]):
                bn.weight.uniform_(-2, 2)  # negative scales: the pool keeps the smallest sums there
                bn.running_mean.uniform_(-0.5, 0.5)
        x = _input((3, channels, size, size), out)
        for name, model in (("pooled", pooled), ("folded", folded)):
            engine, info = _engine(model, folder / f"{name}-{channels}", tuple(x.shape))
            assert info["slimkit_layers"][0]["fused"] == [str(i) for i in range(1, len(model))], info  # all of it
            with torch.no_grad():
                ok.append(torch.equal(engine(x), model(x)) if name == "pooled"
                          else torch.allclose(engine(x), model(x), rtol=1e-5, atol=1e-5))
    return all(ok)


def sparse(folder: Path) -> bool:
    """Sparse fp32 convs (stride 1 and 2) and linear layers (1 row: gathered dots; 5 rows: batch-minor) equal
    torch's within float rounding."""
    torch.manual_seed(0)
    ok = []
    for stride, rows in ((1, 1), (2, 5)):
        model = nn.Sequential(nn.Conv2d(8, 16, 3, stride, 1), nn.ReLU(), nn.Flatten(),
                              nn.Linear(16 * (8 // stride) ** 2, 10))
        with torch.no_grad():
            for layer in (model[0], model[3]):
                layer.weight.mul_(torch.rand_like(layer.weight) > 0.8)
        x = torch.randn(rows, 8, 8, 8)
        engine, info = _engine(model, folder / f"sparse-{stride}", tuple(x.shape))
        assert {line["engine"] for line in info["slimkit_layers"]} == {"slimkit::SparseConv2d", "slimkit::SparseLinear"}
        with torch.no_grad():
            ok.append(torch.allclose(engine(x), model(x), rtol=1e-4, atol=1e-5))
    return all(ok)


def int8(folder: Path) -> bool:
    """Block-sparse int8 convs with signed inputs (random normal: the u8 kernels' offset of 128), strided, without
    a ReLU, and ResNet-20 (unsigned inputs after ReLUs, integer links between operators, residual adds) within
    one step of the int8 graph's output grid."""
    ok = []
    for channels, stride, relu in ((16, 1, True), (6, 2, True), (13, 1, False)):
        torch.manual_seed(channels + stride)
        model = nn.Sequential(nn.Conv2d(channels, 12, 3, stride=stride, padding=1), nn.BatchNorm2d(12),
                              *([nn.ReLU()] if relu else []))
        model = _block_sparse_int8(model, 0.75, torch.randn(16, channels, 12, 12), skip_ends=False)
        ok.append(_int8_close(model, (channels, 12, 12), folder / f"conv-{channels}", 1))
    torch.manual_seed(0)
    model = _block_sparse_int8(resnet20(width=0.5), 0.9, torch.randn(16, 3, 32, 32))
    ok.append(_int8_close(model, (3, 32, 32), folder / "resnet20", 2))
    return all(ok)


def _int8_close(model: nn.Module, shape: tuple[int, ...], folder: Path, steps: int) -> bool:
    calibration = [torch.randn(8, *shape) for _ in range(2)]
    x = torch.randn(4, *shape)
    graph = int8_graph(model, calibration)
    info = export_openvino(model, folder / "model.xml", shape, calibration)
    got = OpenVinoModel(Path(info["model"]), tuple(x.shape), 2, core=openvino_core())(x)
    with torch.no_grad():
        reference = graph(x)
    return bool((got - reference).abs().max() <= steps * list(_steps(graph).values())[-1] * 1.001)


if __name__ == "__main__":
    family, folder = sys.argv[1], Path(sys.argv[2])
    ok = {"binary": binary, "sparse": sparse, "int8": int8, "int8-linear": check_cases}[family](folder)
    print(json.dumps({"ok": ok, "kernels": sorted({row["kernel"] for row in build.kernel_choices()})}))
