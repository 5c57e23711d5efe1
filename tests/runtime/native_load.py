"""Loads each exported folder named on the command line with plain OpenVINO and slimkit's operator library,
compiles it (fp32 pinned, as the load lines do) and runs it once on random inputs, printing one JSON line per
folder: "ran", or "refused" with the exception's type and message. test_native_validation.py runs it in a
child process on mutated model.bin and model.xml files: a crash kills this process, which the parent sees as
a signal.

    python tests/runtime/native_load.py FOLDER...
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import openvino

from slimkit.runtime.engine import build

CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def _inputs(xml: Path) -> list[np.ndarray]:
    """Random inputs of the model's Parameter shapes (a dynamic dimension is 2), in the order OpenVINO lists
    its inputs (the order of the Parameter layers)."""
    rng = np.random.default_rng(0)
    shapes = []
    for layer in ET.parse(xml).getroot().iter("layer"):
        if layer.get("type") == "Parameter":
            shape = layer.find("data").get("shape")
            shapes.append([2 if d in ("?", "-1") else int(d) for d in shape.split(",")] if shape else [])
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


def main(folders: list[str]) -> None:
    core = openvino.Core()
    core.add_extension(str(build.require_library()))
    for folder in folders:
        xml = Path(folder) / "model.xml"
        try:
            compiled = core.compile_model(core.read_model(str(xml)), "CPU", CONFIG)
            compiled(_inputs(xml))
            outcome = {"folder": folder, "outcome": "ran"}
        except Exception as exc:  # what a refused file raises is the point of the test: report it, go on
            outcome = {"folder": folder, "outcome": "refused", "type": type(exc).__name__, "message": str(exc)}
        print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
