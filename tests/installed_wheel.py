"""What a user does with slimkit's wheel, run by test_install.py in a fresh virtual environment that holds only
the wheel and its dependencies, from a folder outside the checkout, with no C++ compiler on PATH: compress a
small model (`slimkit run`), export it (`slimkit export`), and run the exported folder in plain OpenVINO, in a
process that never imports slimkit, by the load lines its engine.json gives, comparing its outputs with the
compressed torch model's. The measured export may keep every layer dense, so the same model is also exported
with every candidate layer on slimkit's operators and run in plain OpenVINO with the wheel's library."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

COMPILERS = ("g++", "gcc", "c++", "cc", "clang++", "clang")
reachable = [name for name in COMPILERS if shutil.which(name)] + [var for var in ("CXX", "CC") if var in os.environ]
assert not reachable, f"a compiler is reachable: {reachable}"

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import slimkit  # noqa: E402
from slimkit.runtime.engine import build  # noqa: E402
from slimkit.runtime.engine.artifact import load_folder  # noqa: E402
from slimkit.runtime.engine.export import export_openvino  # noqa: E402
from slimkit.runtime.engine.operators import DOMAIN  # noqa: E402

# Plain OpenVINO: argv is inputs.npy, outputs.npy, then the IR and the operator library to load, or nothing for
# the folder it runs in, loaded by its engine.json's load lines (digest check included). It fails if anything
# imported slimkit, and prints how many of the IR's nodes are slimkit's operators.
PLAIN_OPENVINO = f"""
import json, sys
import numpy as np
import openvino
inputs, outputs, *ir = sys.argv[1:]
if ir:
    core = openvino.Core()
    core.add_extension(ir[1])
    compiled = core.compile_model(core.read_model(ir[0]), "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})
else:
    scope = {{}}
    exec("\\n".join(json.load(open("engine.json"))["load"]), scope)
    core, compiled = scope["core"], scope["compiled"]
x = np.load(inputs)
np.save(outputs, np.concatenate([compiled(x[i:i + 1])[0] for i in range(len(x))]))
assert not [name for name in sys.modules if name.split(".")[0] == "slimkit"], "plain OpenVINO imported slimkit"
model = core.read_model(ir[0] if ir else "model.xml")
print(sum(op.get_type_info().version_id == "{DOMAIN}" for op in model.get_ordered_ops()))
"""


def slimkit_command(*args: str) -> str:
    """The installed `slimkit` command's output (it is the environment's: PATH holds nothing else)."""
    done = subprocess.run(["slimkit", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"slimkit {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def plain_openvino(images: np.ndarray, cwd: Path, *ir: Path) -> tuple[np.ndarray, int]:
    """(outputs, the number of slimkit's operator nodes in the IR) of `images` through PLAIN_OPENVINO."""
    np.save(cwd / "inputs.npy", images)
    done = subprocess.run([sys.executable, "-c", PLAIN_OPENVINO, "inputs.npy", "outputs.npy", *map(str, ir)],
                          capture_output=True, text=True, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(cwd / "outputs.npy"), int(done.stdout)


assert Path(slimkit.__file__).is_relative_to(sys.prefix), f"slimkit imported from {slimkit.__file__}, not the wheel"
library = build.require_library()
assert library.parent == build.PACKAGED, f"the operators came from {library}, not the wheel's {build.PACKAGED}"
# in a process that has not loaded OpenVINO, the library finds OpenVINO's libraries through its own rpath
subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", library], check=True)
version = slimkit_command("--version").strip()
assert version == f"slimkit {slimkit.__version__}", version

slimkit_command("run", "magnitude-90", "--out", "run", "--no-progress", "data.name=digits", "baseline.epochs=1",
                "train.epochs=1", "measure.batch_sizes=[1]", "measure.repeats=3")
printed = slimkit_command("export", "run", "--engine", "openvino", "--out", "engine")
manifest = json.loads(Path("engine/engine.json").read_text())
assert f"written: '{manifest['choice']['chosen']}'" in " ".join(printed.split()), printed
compressed = slimkit.load("run/model.pt").eval()
images = load_digits().images[:64, None].astype(np.float32) / 16
with torch.no_grad():
    expected = compressed(torch.from_numpy(images)).numpy()
got, _ = plain_openvino(images, Path("engine"))
np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
folder_got = np.concatenate([load_folder("engine")(torch.from_numpy(image[None])).numpy() for image in images])
np.testing.assert_allclose(folder_got, expected, rtol=1e-4, atol=1e-4)

info = export_openvino(compressed, "every-operator/model.xml", manifest["input_shape"], chosen=None)
operators = [line["layer"] for line in info["slimkit_layers"] if line["engine"].startswith(f"{DOMAIN}::")]
assert operators, f"no layer became one of slimkit's operators: {info['slimkit_layers']}"
assert Path(info["library"]) == library, info["library"]
every_got, nodes = plain_openvino(images, Path("every-operator"), Path("model.xml"), library)
assert nodes == len(operators), (nodes, operators)
np.testing.assert_allclose(every_got, expected, rtol=1e-4, atol=1e-4)
print(f"{version}: the exported folder ('{manifest['choice']['chosen']}') and {len(operators)} layers on slimkit's "
      f"operators ({', '.join(operators)}) agree with torch in plain OpenVINO on {len(images)} digits, largest "
      f"difference {np.abs(every_got - expected).max():.2e}")
