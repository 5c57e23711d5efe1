"""The folder a user deploys, and loading it back: the OpenVINO IR with the layers that measured faster as
slimkit's operators (layer_choice.export_measured), the operator library beside it, and engine.json.

engine.json says what runs where (each candidate layer's measured times and what it became), which whole
artifact won and by how much, the CPU it was measured on, the precision (fp32, pinned: OpenVINO would
otherwise run bf16 on CPUs whose default that is), a SHA-256 of every file, and the lines that load it in plain
OpenVINO after checking those digests. The folder appears whole or not at all: it is written in a staging
folder beside it and swapped into place (renameat2 RENAME_EXCHANGE), so a reader sees the old export or the new
one, never a mix; a killed export leaves its staging folder, which the next export removes.

`load_folder` is slimkit's own loader: it checks the digests and then runs the operators from this
installation's own library build, never from the folder, and only if the folder's library is that build.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from slimkit.capture import Example, example_inputs
from slimkit.deprecation import renamed_keyword
from slimkit.environment import cpu_info
from slimkit.errors import SlimkitError
from slimkit.files import atomic_write_text
from slimkit.locks import LOCK_NAME, remove_stale_work
from slimkit.quant.int8_graph import Batch
from slimkit.runtime.engine.build import node_kernels, require_library, runnable_builds
from slimkit.runtime.engine.dense_engines import PINNED_F32, OpenVinoModel
from slimkit.runtime.engine.export import LIBRARY_NAME, copy_atomically, openvino_core
from slimkit.runtime.engine.layer_choice import export_measured

MANIFEST = "engine.json"
FORMAT = "slimkit-engine/2"
STAGING = ".staging-"  # a staging folder is named .<folder>.staging-<pid> beside the folder


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_lines(precision_config: dict[str, str]) -> list[str]:
    """Python that loads the folder in plain OpenVINO, after checking every file against engine.json."""
    return ["import hashlib, json, openvino",
            f"manifest = json.load(open('{MANIFEST}'))",
            "assert all(hashlib.sha256(open(f, 'rb').read()).hexdigest() == d for f, d in manifest['sha256'].items())",
            "core = openvino.Core()",
            f"core.add_extension('{LIBRARY_NAME}')",
            f"compiled = core.compile_model(core.read_model('model.xml'), 'CPU', {precision_config!r})"]


def _node_kernels(layers: list[dict[str, Any]]) -> None:
    """Add to each operator layer's line the kernel its node ran (export names each operator node after its
    layer)."""
    ran = node_kernels()
    for line in layers:
        if line["engine"].startswith("slimkit::") and line["layer"] in ran:
            line["kernel"] = ran[line["layer"]]


def _swap_into_place(staging: Path, folder: Path) -> None:
    """Make `staging` the folder at `folder` in one step; the previous folder, if any, is removed after. A
    writer's lock file in the folder (slimkit.locks) moves with it: the lock's holder keeps its open file."""
    if (folder / LOCK_NAME).exists():
        os.rename(folder / LOCK_NAME, staging / LOCK_NAME)
    if not folder.exists():
        os.rename(staging, folder)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    rename_exchange = 2
    if libc.renameat2(-100, os.fsencode(staging), -100, os.fsencode(folder), rename_exchange) != 0:
        error = ctypes.get_errno()
        raise SlimkitError(f"cannot put the new export in place of {folder}: {os.strerror(error)}; it is complete "
                           f"in {staging}")
    shutil.rmtree(staging)  # now the previous export


@renamed_keyword("input_shape", "example")  # its name until 0.2
def export_folder(model: nn.Module, folder: str | Path, example: Example,
                  calibration: Iterable[Batch] | None = None, *, batch: int = 1, threads: int | None = None,
                  ) -> dict[str, Any]:
    """Write the deployable folder for inputs like `example` (a per-sample shape, a tensor, a tuple or a dict of
    tensors: see slimkit.capture) at `batch` (the size its layers are timed at) and `threads` (default: the
    machine's, see metrics.default_threads); returns engine.json's content. `input_shapes` there names each input's
    shape at `batch`, which load_folder compiles for."""
    import openvino

    from slimkit.metrics import call, default_threads, example_shape, is_shape

    folder = Path(folder).resolve()
    threads = threads or default_threads()
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_work(folder.parent, f".{folder.name}{STAGING}")  # what killed exports left
    staging = folder.parent / f".{folder.name}{STAGING}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        info = export_measured(model, staging / "model.xml", example, calibration, batch=batch, threads=threads)
        copy_atomically(require_library(), staging / LIBRARY_NAME)
        inputs = example_inputs(example)
        first = inputs.feed([torch.zeros_like(t) for t in inputs.batch(batch)]) if is_shape(example) else \
            inputs.feed(inputs.batch(batch))
        call(OpenVinoModel(staging / "model.xml", inputs.shapes(batch), threads, core=openvino_core()),
             first)  # one run, so each operator node reports the kernel it chose
        _node_kernels(info["slimkit_layers"])
        files = ("model.xml", "model.bin", LIBRARY_NAME)
        manifest = {"format": FORMAT, "model": "model.xml", "weights": "model.bin", "library": LIBRARY_NAME,
                    "sha256": {name: sha256_of(staging / name) for name in files},
                    "input_shape": example_shape(example), "input_shapes": inputs.shapes(batch), "batch": batch,
                    "threads": threads,
                    "openvino": openvino.__version__, "precision": info["precision"], "runtime_options": PINNED_F32,
                    "cpu": {**cpu_info(), "kernel_builds": runnable_builds()}, "choice": info["choice"],
                    "agreement": info["agreement"],
                    "slimkit_layers": info["slimkit_layers"], "load": load_lines(PINNED_F32)}
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2))
        _swap_into_place(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """engine.json of an exported folder, checked: its format, and every file it names against its SHA-256."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise SlimkitError(f"{folder / MANIFEST}: not a readable slimkit export ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SlimkitError(f"{folder / MANIFEST}: not a {FORMAT} manifest (re-export the model with this slimkit)")
    digests = manifest.get("sha256")
    if not isinstance(digests, dict) or set(digests) != {manifest.get("model"), manifest.get("weights"),
                                                          manifest.get("library")}:
        raise SlimkitError(f"{folder / MANIFEST}: its sha256 table must name the model, weights and library files")
    for name, digest in digests.items():
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            raise SlimkitError(f"{folder / MANIFEST}: {name!r} is not a file of the folder")
        path = folder / name
        if not path.is_file() or sha256_of(path) != digest:
            raise SlimkitError(f"{path}: missing or changed since the export (its SHA-256 differs from engine.json's)")
    return manifest


def load_folder(folder: str | Path, shape: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
                threads: int | None = None) -> OpenVinoModel:
    """An exported folder as a callable OpenVINO model (fp32 pinned), after read_manifest's checks, compiled for
    `shape` (each input's by name for several) or the export's own. The operators come from this installation's
    library, and only when the folder's library is byte for byte that build: code in a folder someone shared is
    never loaded."""
    from slimkit.metrics import default_threads

    folder = Path(folder)
    manifest = read_manifest(folder)
    installed = require_library()
    if manifest["sha256"][manifest["library"]] != sha256_of(installed):
        raise SlimkitError(f"{folder}: its operator library is not this installation's build ({installed.name}); "
                           f"slimkit loads operators only from its own build: re-export the model here")
    shapes = shape or manifest.get("input_shapes") or (manifest["batch"], *manifest["input_shape"])
    return OpenVinoModel(folder / manifest["model"], shapes, threads or default_threads(), core=openvino_core())
