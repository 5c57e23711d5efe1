"""slimkit::QuantSparseLinear: a transformer's block-sparse int8 linear layer on activations [..., K] inside
OpenVINO, against an independent numpy integer reference, exactly (the int32 sums, then the float epilogue in
the same float32 order). Every kernel alone (SLIMKIT_KERNEL) runs these cases through kernel_check.py
(test_kernel_choice.py); here the tuner picks."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from slimkit.errors import SlimkitError
from slimkit.quant.onnx_export import export_onnx
from slimkit.runtime.engine.dense_engines import OpenVinoModel
from slimkit.runtime.engine.export import openvino_core
from slimkit.runtime.engine.quant_linear import TRANSLATIONS, QuantSparseLinear, pack_blocks, unpack_blocks

pytest.importorskip("openvino")

UNSIGNED, SIGNED = (0.05, 0, 255), (0.03, -128, 127)


class _Layer(nn.Module):
    """One operator, as the exported graph holds it (a module of its own, so torch.export has a forward to call)."""

    def __init__(self, linear: QuantSparseLinear):
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def _weights(out: int, features: int, sparsity: float, seed: int) -> torch.Tensor:
    """Random int8 weights [out, features] with whole blocks of 4 consecutive features zero (about `sparsity` of
    them), and the extremes -128 and 127 present."""
    g = torch.Generator().manual_seed(seed)
    integers = torch.randint(-128, 128, (out, features), generator=g, dtype=torch.int64)
    groups = (features + 3) // 4
    keep = torch.rand(out, groups, generator=g) >= sparsity
    integers = integers * keep.repeat_interleave(4, 1)[:, :features]
    integers[0, 0], integers[-1, -1] = -128, 127
    return integers.to(torch.int8)


def reference(x: np.ndarray, integers: np.ndarray, grid: tuple[float, int, int], weight_step: np.ndarray,
              bias: np.ndarray) -> np.ndarray:
    """q = clamp(rint(x * float32(1 / step))), exact integer sums in int64, then float32(sum) * scale + bias."""
    step, low, high = grid
    inverse = np.float32(1.0) / np.float32(step)
    q = np.clip(np.rint(x.astype(np.float32) * inverse), low, high).astype(np.int64)
    sums = q @ integers.astype(np.int64).T
    assert np.abs(sums).max() < 2**31
    scale = (weight_step.astype(np.float32) * np.float32(step)).astype(np.float32)
    return sums.astype(np.float32) * scale + bias.astype(np.float32)


def export_layer(folder: Path, integers: torch.Tensor, grid: tuple[float, int, int], example: torch.Tensor,
                 seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """One operator exported to ONNX through torch.export (the transformer path): (path, weight steps, bias)."""
    g = torch.Generator().manual_seed(seed)
    out = integers.shape[0]
    weight_step = torch.rand(out, generator=g) * 0.01 + 0.001
    bias = torch.randn(out, generator=g)
    path = export_onnx(_Layer(QuantSparseLinear(integers, weight_step, bias, grid, "layer")).eval(),
                       folder / "model.onnx", (example,), translations=TRANSLATIONS)
    return path, weight_step.numpy(), bias.numpy()


# (out, features, input shape, grid): 2-D and 3-D inputs, odd K and N, K < 4, rows past a 256-row chunk
CASES = [(12, 16, (3, 16), UNSIGNED), (7, 13, (2, 5, 13), SIGNED), (33, 70, (2, 9, 70), UNSIGNED),
         (5, 3, (4, 3), SIGNED), (40, 64, (3, 100, 64), SIGNED), (17, 36, (1, 1, 36), UNSIGNED)]


def check_cases(folder: Path) -> bool:
    """Every case's OpenVINO output equals the reference exactly (the kernel_check family 'int8-linear')."""
    ok = []
    for index, (out, features, shape, grid) in enumerate(CASES):
        integers = _weights(out, features, 0.7, index)
        example = torch.randn(2, *shape[1:]) if len(shape) == 2 else torch.randn(2, 4, shape[-1])
        path, weight_step, bias = export_layer(folder / f"case{index}", integers, grid, example, index)
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(100 + index)) * 3  # past the grid's ends
        if grid[1] == 0:
            x = x.relu()
        got = OpenVinoModel(path, shape, 2, core=openvino_core())(x).numpy()
        ok.append(np.array_equal(got, reference(x.numpy(), integers.numpy(), grid, weight_step, bias)))
    return all(ok)


def test_the_operator_equals_the_integer_reference_exactly(tmp_path):
    assert check_cases(tmp_path)


@pytest.mark.parametrize("grid", [UNSIGNED, SIGNED], ids=["unsigned", "signed"])
def test_the_torch_form_is_the_operators_arithmetic(grid):
    integers = _weights(9, 21, 0.5, 3)
    x = torch.randn(2, 3, 21) * 3
    weight_step, bias = torch.rand(9) * 0.01 + 0.001, torch.randn(9)
    with torch.no_grad():
        got = QuantSparseLinear(integers, weight_step, bias, grid, "layer")(x)
    assert np.array_equal(got.numpy(), reference(x.numpy(), integers.numpy(), grid, weight_step.numpy(), bias.numpy()))


def test_packing_keeps_whole_blocks_of_4_features_and_round_trips():
    integers = _weights(6, 10, 0.5, 4)
    weight, group, ptr = pack_blocks(integers)
    assert weight.dtype == torch.int8 and group.dtype == torch.int32 and ptr.dtype == torch.int64
    assert weight.numel() == 4 * group.numel() and int(ptr[-1]) == group.numel()
    nonzero_blocks = int((torch.nn.functional.pad(integers, (0, 2)).reshape(6, 3, 4) != 0).any(2).sum())
    assert group.numel() == nonzero_blocks
    assert torch.equal(unpack_blocks(weight, group, ptr, 10), integers)
    with pytest.raises(SlimkitError, match="int8"):
        pack_blocks(integers.float())


def test_a_grid_the_operator_cannot_read_is_refused_by_layer():
    with pytest.raises(SlimkitError, match=r"layer 'enc.fc'.*step -0.1"):
        QuantSparseLinear(_weights(4, 8, 0.0, 1), torch.ones(4), None, (-0.1, -128, 127), "enc.fc")
    with pytest.raises(SlimkitError, match="8-bit grid"):
        QuantSparseLinear(_weights(4, 8, 0.0, 1), torch.ones(4), None, (0.1, -8, 7), "enc.fc")


def _ir(folder: Path) -> tuple[Path, Path]:
    """The operator's ONNX as an OpenVINO IR, whose attributes and constants a test can edit."""
    import openvino as ov

    integers = _weights(8, 13, 0.5, 7)
    path, _, _ = export_layer(folder, integers, SIGNED, torch.randn(2, 3, 13))
    xml = folder / "model.xml"
    ov.save_model(openvino_core().read_model(str(path)), str(xml), compress_to_fp16=False)
    return xml, xml.with_suffix(".bin")


@pytest.mark.parametrize(("attribute", "value", "message"), [
    ("in_step", "-1", "attribute in_step is -1; it must be positive"),
    ("in_step", "nan", "attribute in_step is nan"),
    ("in_low", "-7", "an 8-bit grid is -128 to 127 or 0 to 255"),
    ("features", "12", "dimension 2 must be 12, the attribute features"),
    ("features", "0", "attribute features is 0"),
    ("clamp", "3", "attribute clamp is 3"),
])
def test_corrupt_attributes_are_refused_naming_the_field(tmp_path, attribute, value, message):
    xml, _ = _ir(tmp_path)
    root = ET.parse(xml)
    layer = next(node for node in root.iter("layer") if node.get("type") == "QuantSparseLinear")
    layer.find("data").set(attribute, value)
    root.write(xml)
    with pytest.raises(RuntimeError, match=re.escape(message)):
        OpenVinoModel(xml, (3, 3, 13), 1, core=openvino_core())(torch.randn(3, 3, 13))


def _constant(xml: Path, port: int) -> tuple[int, int, str]:
    """(offset, size, element type) in model.bin of the operator's constant input `port`."""
    root = ET.parse(xml).getroot()
    layers = {node.get("id"): node for node in root.iter("layer")}
    op = next(i for i, node in layers.items() if node.get("type") == "QuantSparseLinear")
    edge = next(e for e in root.iter("edge") if e.get("to-layer") == op and e.get("to-port") == str(port))
    data = layers[edge.get("from-layer")].find("data")
    return int(data.get("offset")), int(data.get("size")), data.get("element_type")


@pytest.mark.parametrize(("port", "index", "value", "message"), [
    (2, 0, 4, "input group[0] is 4; it must name a group of 4 input features, 0 to 3"),
    (2, 1, -1, "input group[1] is -1"),
    (3, 1, 10**6, "input ptr[1] is 1000000"),
    (3, 0, 1, "input ptr[0] is 1; it must be 0"),
])
def test_a_corrupt_block_layout_is_refused_naming_the_field(tmp_path, port, index, value, message):
    xml, weights = _ir(tmp_path)
    offset, size, element = _constant(xml, port)
    kind = {"i32": np.int32, "i64": np.int64}[element]
    data = bytearray(weights.read_bytes())
    values = np.frombuffer(bytes(data[offset:offset + size]), kind).copy()
    values[index] = value
    data[offset:offset + size] = values.tobytes()
    weights.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=re.escape(message)):
        OpenVinoModel(xml, (3, 3, 13), 1, core=openvino_core())(torch.randn(3, 3, 13))


def test_a_weight_past_the_last_feature_is_refused(tmp_path):
    xml, weights = _ir(tmp_path)  # 13 features: the last group holds feature 12 and three zero weights
    offset, _, _ = _constant(xml, 1)
    goffset, gsize, _ = _constant(xml, 2)
    data = bytearray(weights.read_bytes())
    group = np.frombuffer(bytes(data[goffset:goffset + gsize]), np.int32)
    block = int(np.nonzero(group == 3)[0][0])
    data[offset + 4 * block + 3] = 5  # feature 15
    weights.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=r"input weight\[\d+\] is 5; a weight past the last feature must be 0"):
        OpenVinoModel(xml, (3, 3, 13), 1, core=openvino_core())(torch.randn(3, 3, 13))
