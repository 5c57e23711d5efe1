"""slimkit's native operators refuse crafted data with an error, never a crash (issue 30: three crafted index
values in model.bin took the process down with SIGSEGV).

Small models that use every operator (BinaryConv2d with packed links and a fused residual, SparseConv2d,
SparseLinear, QuantSparseConv2d with linked integers and a residual) are exported, and their files mutated:
random bytes over each operator constant's region of model.bin, boundary values written at the offsets
model.xml gives for it (0, -1, INT32_MAX, INT32_MIN, INT64_MAX, a ptr that decreases or ends past its count,
a huge channel index, NaN and Inf), and operator attributes edited in model.xml (stride 0, a negative pad, a
kernel of 0, a grid step of -1 or NaN, flags out of range). native_load.py loads, compiles and runs them in a
child process. No child may die by a signal; a mutation known to be invalid must be refused with an
exception whose message names the operator (or OpenVINO's own check); any other may run or be refused.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from slimkit.runtime.engine.export import export_openvino
from slimkit.sparsity.topk import layerwise_masks

sys.path.insert(0, str(Path(__file__).parent))
from test_engine_ops import _layer
from test_quant_sparse import _block_sparse_int8

pytest.importorskip("openvino")

_OPERATOR = {"binary": "BinaryConv2d", "sparse": "SparseConv2d", "linear": "SparseLinear", "int8": "QuantSparseConv2d"}
OPENVINO_REFUSES = ("Incorrect weights in bin file", "inconsistent for Const op")  # its IR reader's own checks
CHILD = Path(__file__).with_name("native_load.py")
INT32_MAX, INT32_MIN, INT64_MAX = 2**31 - 1, -(2**31), 2**63 - 1
PACK = {"i32": "<i", "i64": "<q", "f32": "<f", "i8": "<b"}
# the role of each operator input that is a constant: index arrays, the CSR ptr, floats, +-1 weights, int8
ROLES = {"BinaryConv2d": {1: "signs", 2: "float", 3: "float"},
         "SparseConv2d": {1: "float", 2: "index", 3: "index", 4: "ptr", 5: "float"},
         "SparseLinear": {1: "float", 2: "index", 3: "ptr", 4: "float"},
         "QuantSparseConv2d": {1: "int8", 2: "index", 3: "index", 4: "ptr", 5: "float", 6: "float"}}


class _BinaryNet(nn.Module):
    """Three binary convs: the second reads the first's sign bits and adds its output back (a residual)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = _layer(8, 16), _layer(16, 16), _layer(16, 8, stride=2)
        self.bn = nn.BatchNorm2d(16).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.a(x)
        return self.c(self.bn(self.b(y)) + y)


class _ConvNet(nn.Module):
    """Three convs, the second with a residual add and the third strided."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c = nn.Conv2d(16, 8, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        return self.c(torch.relu(self.bn(self.b(y)) + y))


def _masked(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear):
                layer.weight.mul_(layerwise_masks({"w": layer.weight.abs()}, 0.8)["w"])
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Each operator's model exported with every candidate layer on the operator: name -> folder."""
    root = tmp_path_factory.mktemp("native")
    torch.manual_seed(0)
    int8 = _block_sparse_int8(_ConvNet(), 0.75, torch.randn(16, 8, 8, 8), skip_ends=False)
    models = {"binary": (_BinaryNet().eval(), (8, 8, 8), None),
              "sparse": (_masked(_ConvNet()), (8, 8, 8), None),
              "linear": (_masked(nn.Sequential(nn.Flatten(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))),
                         (3, 4, 4), None),
              "int8": (int8, (8, 8, 8), [torch.randn(4, 8, 8, 8) for _ in range(2)])}
    folders = {}
    for name, (model, shape, calibration) in models.items():
        info = export_openvino(model, root / name / "model.xml", shape, calibration)
        assert {line["engine"] for line in info["slimkit_layers"]} == {f"slimkit::{_OPERATOR[name]}"}, info
        folders[name] = root / name
    return folders


@dataclass(frozen=True)
class Constant:
    """An operator input that is a Const layer of model.xml, and where its data lie in model.bin."""

    operator: str  # the operator's type
    node: str  # the operator layer's name
    layer: str  # the Const layer's id
    role: str  # see ROLES
    element_type: str
    offset: int
    count: int

    def read(self, data: bytes) -> list[float]:
        fmt = PACK[self.element_type]
        return [struct.unpack_from(fmt, data, self.offset + i * struct.calcsize(fmt))[0] for i in range(self.count)]

    def written(self, data: bytes, index: int, value: float) -> bytes:
        out = bytearray(data)
        fmt = PACK[self.element_type]
        struct.pack_into(fmt, out, self.offset + index * struct.calcsize(fmt), value)
        return bytes(out)


def _constants(xml: str) -> list[Constant]:
    root = ET.fromstring(xml)
    layers = {layer.get("id"): layer for layer in root.iter("layer")}
    found = []
    for edge in root.iter("edge"):
        source, target = layers[edge.get("from-layer")], layers[edge.get("to-layer")]
        role = ROLES.get(target.get("type"), {}).get(int(edge.get("to-port")))
        if source.get("type") == "Const" and role is not None and target.get("version") == "slimkit":
            data = source.find("data")
            size = struct.calcsize(PACK[data.get("element_type")])
            found.append(Constant(target.get("type"), target.get("name"), source.get("id"), role,
                                  data.get("element_type"), int(data.get("offset")), int(data.get("size")) // size))
    return found


@dataclass(frozen=True)
class Case:
    name: str
    xml: str
    bin: bytes
    invalid: bool  # known to be invalid: must be refused
    refuser: tuple[str, ...]  # what a refusal's message names (one of): the operator, or OpenVINO's own check


def _bin_cases(model: str, xml: str, data: bytes) -> list[Case]:
    """Random bytes over each operator constant, and boundary values written at its offsets."""
    cases = []
    rng = random.Random(model)
    for k, c in enumerate(_constants(xml)):
        name = f"{model}/{c.node}/{c.role}{k}"
        width = struct.calcsize(PACK[c.element_type])
        region = bytearray(data)
        region[c.offset:c.offset + c.count * width] = rng.randbytes(c.count * width)
        refuser = (f"slimkit::{c.operator}",)
        cases.append(Case(f"{name} random region", xml, bytes(region), False, refuser))
        spot = bytearray(data)
        for _ in range(4):
            spot[c.offset + rng.randrange(c.count * width)] = rng.randrange(256)
        cases.append(Case(f"{name} 4 random bytes", xml, bytes(spot), False, refuser))
        values = c.read(data)
        last, mid = c.count - 1, c.count // 2
        boundary: list[tuple[int, float, bool]] = []  # (index, value, invalid)
        if c.role == "index":
            boundary = [(0, -1, True), (last, INT32_MAX, True), (mid, INT32_MIN, True), (0, 1 << 20, True),
                        (mid, 0, False)]
        elif c.role == "ptr":
            big = INT64_MAX if c.element_type == "i64" else INT32_MAX
            boundary = [(0, 1, True), (last, values[last] + 4, True), (last, big, True), (last, -big - 1, True),
                        (mid, -1, True), (mid, INT32_MAX, True), (mid, INT32_MIN, True)]
            if values[mid - 1] >= 4:  # a ptr that decreases
                boundary.append((mid, values[mid - 1] - 4, True))
            boundary.append((mid, values[mid] + 1, c.operator == "SparseConv2d" and values[mid] < values[mid + 1]))
        elif c.role in ("float", "signs"):
            boundary = [(0, float("nan"), True), (last, float("inf"), True), (mid, float("-inf"), True),
                        (mid, 0.5, c.role == "signs"), (last, -values[last], False)]
        elif c.role == "int8":
            boundary = [(0, -128, False), (last, 127, False)]
        for index, value, invalid in boundary:
            cases.append(Case(f"{name}[{index}] = {value}", xml, c.written(data, index, value), invalid, refuser))
    return cases


# attribute edits that an operator must refuse, each tried on one operator node of each model (in turn)
BAD_ATTRIBUTES = [{"stride": "0"}, {"stride": "-1"}, {"stride": "1000000"}, {"pad": "-1"}, {"clamp": "2"},
                  {"kernel_h": "0"}, {"kernel_h": "100000"}, {"kernel_w": "-3"},
                  {"clamp": "1", "low": "1", "high": "0"}, {"clamp": "1", "low": "nan"}, {"in_step": "-1"},
                  {"in_step": "nan"}, {"in_step": "0"}, {"pre_step": "nan"}, {"post_step": "inf"}, {"in_low": "5"},
                  {"post_high": "1000"}, {"one_plane": "3"}, {"pack_output": "7"}, {"packed_input": "2"},
                  {"link_output": "2"}, {"linked_input": "-1"}, {"float_output": "5"}, {"pool": "1"},
                  {"pool": "2"}]  # pool 2 without the inputs post_scale and post_shift


def _xml_cases(model: str, xml: str, data: bytes) -> list[Case]:
    """Operator attributes out of range, and a Const whose offset or size reaches past model.bin's end or whose
    size is short of its shape (OpenVINO's own checks)."""
    cases = []
    nodes = [layer.get("id") for layer in ET.fromstring(xml).iter("layer") if layer.get("version") == "slimkit"]
    turn = 0
    for edit in BAD_ATTRIBUTES:
        mutated = ET.fromstring(xml)
        layer = next(x for x in mutated.iter("layer") if x.get("id") == nodes[turn % len(nodes)])
        if not set(edit) <= set(layer.find("data").attrib):
            continue  # not an attribute of this operator
        turn += 1
        layer.find("data").attrib.update(edit)
        label = ", ".join(f"{n}={v}" for n, v in edit.items())
        cases.append(Case(f"{model}/{layer.get('name')} {label}", ET.tostring(mutated, "unicode"), data, True,
                          (f"slimkit::{layer.get('type')}",)))
    cases += _rewired(model, xml, data)
    first = next(x for x in ET.fromstring(xml).iter("layer") if x.get("type") == "Const").find("data")
    for key, value in (("offset", str(len(data))), ("size", str(len(data) + 8)),
                       ("size", str(int(first.get("size")) // 2))):  # shorter than its shape
        mutated = ET.fromstring(xml)
        const = next(x for x in mutated.iter("layer") if x.get("type") == "Const").find("data")
        const.set(key, value)
        cases.append(Case(f"{model}/first Const {key}={value}", ET.tostring(mutated, "unicode"), data, True,
                          OPENVINO_REFUSES))
    return cases


def _rewired(model: str, xml: str, data: bytes) -> list[Case]:
    """Each operator input that is neither a constant nor the model's input (a residual, the previous layer's
    output, bits or integers) fed the model's input instead: a shape or element type the operator must refuse."""
    cases = []
    root = ET.fromstring(xml)
    kinds = {layer.get("id"): layer for layer in root.iter("layer")}
    parameter = next(i for i, layer in kinds.items() if layer.get("type") == "Parameter")
    for k, edge in enumerate(root.iter("edge")):
        target, source = kinds[edge.get("to-layer")], kinds[edge.get("from-layer")]
        if target.get("version") == "slimkit" and source.get("type") not in ("Const", "Parameter"):
            mutated = ET.fromstring(xml)
            rewired = list(mutated.iter("edge"))[k]
            rewired.set("from-layer", parameter)
            rewired.set("from-port", "0")
            cases.append(Case(f"{model}/{target.get('name')} input {edge.get('to-port')} fed the model's input",
                              ET.tostring(mutated, "unicode"), data, True, (f"slimkit::{target.get('type')}",)))
    return cases


def _child(folders: list[str], outcomes: dict[str, dict]) -> int:
    """Run native_load.py on `folders`, adding what it reports to `outcomes`; its return code (< 0: the
    signal that killed it)."""
    done = subprocess.run([sys.executable, str(CHILD), *folders], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SLIMKIT_TUNE_CACHE": "off"})
    for line in done.stdout.splitlines():
        outcome = json.loads(line)
        outcomes[outcome["folder"]] = outcome
    assert done.returncode <= 0, done.stderr[-3000:]
    return done.returncode


def _run(folders: list[Path]) -> tuple[dict[str, dict], list[tuple[str, int]]]:
    """Each folder's outcome from native_load.py, the folders run in one child process; where it dies by a
    signal, the first folder it had not reported is run alone, to name the crash, and the rest go on in one
    process again. A folder that crashes only after others in one process counts as a signal too."""
    outcomes: dict[str, dict] = {}
    signals: list[tuple[str, int]] = []
    pending = [str(f) for f in folders]
    while pending:
        code = _child(pending, outcomes)
        pending = [f for f in pending if f not in outcomes]
        if code < 0:
            first = pending.pop(0)
            alone = _child([first], outcomes)
            signals.append((first, -alone if alone < 0 else -code))
    return outcomes, signals


def test_crafted_files_are_refused_cleanly_and_never_crash(exported, tmp_path):
    cases: list[Case] = []
    for model, folder in exported.items():
        xml, data = (folder / "model.xml").read_text(), (folder / "model.bin").read_bytes()
        cases += _bin_cases(model, xml, data) + _xml_cases(model, xml, data)
    folders = []
    for i, case in enumerate(cases):
        folder = tmp_path / f"case{i}"
        folder.mkdir()
        (folder / "model.xml").write_text(case.xml)
        (folder / "model.bin").write_bytes(case.bin)
        folders.append(folder)
    with ThreadPoolExecutor(2) as pool:  # two child processes, each a half of the cases
        halves = list(pool.map(_run, [folders[0::2], folders[1::2]]))
    outcomes = {**halves[0][0], **halves[1][0]}
    signals = halves[0][1] + halves[1][1]
    named = {str(f): case for f, case in zip(folders, cases, strict=True)}
    refused = {f: o for f, o in outcomes.items() if o["outcome"] == "refused"}
    ran = [f for f, o in outcomes.items() if o["outcome"] == "ran"]
    print(f"native fuzz: {len(cases)} cases, {len(refused)} refused cleanly, {len(ran)} ran, {len(signals)} signals")
    assert not signals, [(named[f].name, signal) for f, signal in signals]
    assert not [named[f].name for f in ran if named[f].invalid], "invalid data ran"
    unclean = [(named[f].name, o["type"], o["message"][:300]) for f, o in refused.items()
               if o["type"] != "RuntimeError" or not any(text in o["message"] for text in named[f].refuser)]
    assert not unclean, unclean


# Runs the model at argv[1], whose index input is a Parameter, once per column set in argv[3] (.npy, one row
# each) on the input in argv[2] (.npy), in one infer request (so the index buffer keeps its address); each
# outcome is the output's largest difference from the model at argv[4 + k] (the same columns as constants), or
# the refusal.
COMPUTED_INDICES = """
import json, sys
import numpy as np, openvino
from slimkit.runtime.engine import build
core = openvino.Core()
core.add_extension(str(build.require_library()))
config = {"INFERENCE_PRECISION_HINT": "f32"}
x, sets = np.load(sys.argv[2]), np.load(sys.argv[3])
request = core.compile_model(core.read_model(sys.argv[1]), "CPU", config).create_infer_request()
ports = request.model_inputs
for k, columns in enumerate(sets):
    feeds = {port: columns if port.get_element_type() == openvino.Type.i32 else x for port in ports}
    try:
        got = request.infer(feeds)[0].copy()
    except RuntimeError as exc:
        print(json.dumps({"outcome": "refused", "message": str(exc)}), flush=True)
        continue
    expected = core.compile_model(core.read_model(sys.argv[4 + k]), "CPU", config)(x)[0]
    print(json.dumps({"outcome": "ran", "difference": float(np.abs(got - expected).max())}), flush=True)
"""


def test_an_index_input_the_graph_computes_is_checked_on_every_call(exported, tmp_path):
    """A crafted graph can feed an operator's index input from something other than a Constant; its buffer
    then keeps its address while its values change, so the operator checks (and derives from) it on every call:
    valid columns that change give the outputs of the same columns as constants, an out-of-range one is
    refused, and the next valid call runs again."""
    import numpy as np

    folder = exported["linear"]
    xml, data = (folder / "model.xml").read_text(), (folder / "model.bin").read_bytes()
    column = next(c for c in _constants(xml) if c.role == "index")
    root = ET.fromstring(xml)
    layer = next(x for x in root.iter("layer") if x.get("id") == column.layer)
    layer.set("type", "Parameter")
    layer.find("data").attrib = {"shape": str(column.count), "element_type": "i32"}
    (tmp_path / "computed.xml").write_text(ET.tostring(root, "unicode"))
    (tmp_path / "computed.bin").write_bytes(data)
    original = np.array(column.read(data), dtype=np.int32)
    features = 48
    bad = original.copy()
    bad[len(bad) // 2] = 2**31 - 1
    sets = [original, (original + 1) % features, bad, (original + 7) % features]
    references = []
    for k, columns in enumerate(sets):
        reference = tmp_path / f"constants{k}"
        reference.mkdir()
        (reference / "model.xml").write_text(xml)
        written = bytearray(data)
        written[column.offset:column.offset + 4 * column.count] = columns.tobytes()
        (reference / "model.bin").write_bytes(bytes(written))
        references.append(str(reference / "model.xml"))
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32))
    np.save(tmp_path / "sets.npy", np.stack(sets))
    done = subprocess.run([sys.executable, "-c", COMPUTED_INDICES, str(tmp_path / "computed.xml"),
                           str(tmp_path / "x.npy"), str(tmp_path / "sets.npy"), *references],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])  # < 0: the signal that killed it
    outcomes = [json.loads(line) for line in done.stdout.splitlines()]
    assert [o["outcome"] for o in outcomes] == ["ran", "ran", "refused", "ran"], outcomes
    assert all(o["difference"] < 1e-5 for o in outcomes if o["outcome"] == "ran"), outcomes
    assert "slimkit::SparseLinear" in outcomes[2]["message"] and "input column" in outcomes[2]["message"]
