"""What a user does with slimkit's wheel, run by test_install.py in a fresh virtual environment that holds only
the wheel and its dependencies, from a folder outside the checkout, with no C++ compiler on PATH: compress a
small model, export it with every candidate layer on slimkit's operators, load that in plain OpenVINO with the
wheel's library and compare its outputs with the compressed torch model's; then the deployable folder
(export_folder), loaded back by load_folder, whose digest check runs against the wheel's library."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

COMPILERS = ("g++", "gcc", "c++", "cc", "clang++", "clang")
reachable = [name for name in COMPILERS if shutil.which(name)] + [var for var in ("CXX", "CC") if var in os.environ]
assert not reachable, f"a compiler is reachable: {reachable}"

import numpy as np  # noqa: E402
import openvino  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import slimkit  # noqa: E402
from slimkit.runtime.engine import build  # noqa: E402
from slimkit.runtime.engine.artifact import export_folder, load_folder  # noqa: E402
from slimkit.runtime.engine.export import export_openvino  # noqa: E402
from slimkit.runtime.engine.operators import DOMAIN  # noqa: E402

assert Path(slimkit.__file__).is_relative_to(sys.prefix), f"slimkit imported from {slimkit.__file__}, not the wheel"
library = build.require_library()
assert library.parent == build.PACKAGED, f"the operators came from {library}, not the wheel's {build.PACKAGED}"
# in a process that has not loaded OpenVINO, the library finds OpenVINO's libraries through its own rpath
subprocess.run([sys.executable, "-c", "import ctypes, sys; ctypes.CDLL(sys.argv[1])", library], check=True)
version = subprocess.run([Path(sys.executable).with_name("slimkit"), "--version"], capture_output=True, text=True,
                         check=True).stdout.strip()
assert version == f"slimkit {slimkit.__version__}", version

torch.manual_seed(0)
model = slimkit.models.lenet(in_channels=1, num_classes=10, input_size=8)
run = slimkit.compress(model, data="digits", recipe="magnitude-90", out_dir="run", progress=False,
                       overrides=("baseline.epochs=1", "train.epochs=1", "measure.batch_sizes=[1]",
                                  "measure.repeats=3"))
compressed = run.model.eval()
info = export_openvino(compressed, "engine/model.xml", (1, 8, 8), chosen=None)
operators = [line["layer"] for line in info["slimkit_layers"] if line["engine"].startswith(f"{DOMAIN}::")]
assert operators, f"no layer became one of slimkit's operators: {info['slimkit_layers']}"

core = openvino.Core()
core.add_extension(info["library"])
ir = core.read_model("engine/model.xml")
assert sum(op.get_type_info().version_id == DOMAIN for op in ir.get_ordered_ops()) == len(operators)
compiled = core.compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
images = torch.from_numpy(load_digits().images[:64, None].astype(np.float32) / 16)
with torch.no_grad():
    expected = compressed(images).numpy()
got = np.concatenate([compiled(image[None].numpy())[0] for image in images])
np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)

manifest = export_folder(compressed, "folder", (1, 8, 8))
deployed = load_folder("folder")
folder_got = np.concatenate([deployed(image[None]).numpy() for image in images])
np.testing.assert_allclose(folder_got, expected, rtol=1e-4, atol=1e-4)
print(f"{version}: {len(operators)} layers on slimkit's operators ({', '.join(operators)}) agree with torch on "
      f"{len(images)} digits, largest difference {np.abs(got - expected).max():.2e}; the deployable folder "
      f"(chosen: {manifest['choice']['chosen']}) loads and agrees")
