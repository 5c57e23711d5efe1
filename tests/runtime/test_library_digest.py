"""The installed operator library is loaded only when its bytes match the SHA-256 recorded when it was built
(issue 30: a truncated library crashed the process with SIGBUS on load). Each load runs in a child process
that takes a damaged copy of the library (with the build's digest record beside it) for the installed build:
it must refuse both ways in (OpenVINO's add_extension and ctypes) with an error naming the digest, and never
die by a signal."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from slimkit.runtime.engine import build

pytest.importorskip("openvino")

# Loads the library at argv[1] as the installed build both ways slimkit does, printing what each did.
LOAD = """
import sys
from pathlib import Path
from slimkit.errors import SlimkitError
from slimkit.runtime.engine import build
build.library_path = lambda: Path(sys.argv[1])
from slimkit.runtime.engine.export import openvino_core
for name, load in (("openvino", openvino_core), ("ctypes", build.runnable_builds)):
    try:
        load()
        print(name, "loaded", flush=True)
    except SlimkitError as exc:
        print(name, "refused:", exc, flush=True)
"""


def _load(library: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-c", LOAD, str(library)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])  # < 0: the signal that killed it
    return done.stdout.splitlines()


def _copy(tmp_path: Path, damage: str) -> Path:
    """The installed library and its digest record, copied into tmp_path, the library damaged by `damage`."""
    installed = build.require_library()
    library = tmp_path / installed.name
    shutil.copyfile(installed, library)
    shutil.copyfile(build.digest_path(installed), build.digest_path(library))
    data = bytearray(library.read_bytes())
    if damage == "truncated":
        del data[len(data) // 2:]
    elif damage == "headers only":
        del data[4096:]
    elif damage == "one byte changed":
        data[len(data) // 2] ^= 0xFF
    elif damage == "record missing":
        build.digest_path(library).unlink()
    library.write_bytes(bytes(data))
    return library


def test_an_intact_library_loads_both_ways(tmp_path):
    assert _load(_copy(tmp_path, "none")) == ["openvino loaded", "ctypes loaded"]


@pytest.mark.parametrize("damage", ["truncated", "headers only", "one byte changed", "record missing"])
def test_a_damaged_library_is_refused_before_it_is_loaded(tmp_path, damage):
    library = _copy(tmp_path, damage)
    lines = _load(library)
    assert [line.split(" ", 1)[0] for line in lines] == ["openvino", "ctypes"], lines
    for line in lines:
        assert f"refused: slimkit's OpenVINO operator library {library} does not match the SHA-256" in line, line
        assert "slimkit.runtime.engine.build" in line  # the way out


def test_the_digest_record_is_sha256sum_format_of_the_installed_build():
    import hashlib

    installed = build.require_library()
    digest, name = build.digest_path(installed).read_text().split()
    assert name == installed.name and digest == hashlib.sha256(installed.read_bytes()).hexdigest()
