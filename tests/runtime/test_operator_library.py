"""Where slimkit finds its operator library (engine/build.require_library): the one an installed wheel carries
first, then the development build; a wheel's library refused by name under another OpenVINO release, or where
the wheel was built without one; and a machine that cannot build the operators told why before any compiling.
The wheel itself is built and installed in tests/test_install.py."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
from pathlib import Path

import pytest

from slimkit.errors import SlimkitError
from slimkit.runtime.engine import build


def _installed_wheel_lib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, record: dict[str, str] | str) -> Path:
    """A lib/ folder as a wheel installs it, holding the development build with its recorded digest and `record`
    as operators.json."""
    folder = tmp_path / "lib"
    folder.mkdir()
    for built in (build.library_path(), build.digest_path(build.library_path())):
        shutil.copy(built, folder / built.name)
    (folder / build.PACKAGED_RECORD).write_text(record if isinstance(record, str) else json.dumps(record))
    monkeypatch.setattr(build, "PACKAGED", folder)
    return folder


def test_the_library_a_wheel_carries_comes_before_the_development_build(tmp_path, monkeypatch):
    assert build.require_library() == build.library_path()  # a checkout: no wheel's library
    installed = importlib.metadata.version("openvino")
    folder = _installed_wheel_lib(tmp_path, monkeypatch, {"library": build.library_path().name, "openvino": installed})
    assert build.require_library() == folder / build.library_path().name
    with open(folder / build.library_path().name, "r+b") as library:  # a changed byte: never handed to dlopen
        library.seek(100)
        byte = library.read(1)
        library.seek(100)
        library.write(bytes([byte[0] ^ 1]))
    with pytest.raises(SlimkitError, match="does not match the SHA-256 recorded when the wheel was built"):
        build.require_library()


def test_a_wheels_library_built_against_another_openvino_release_is_refused_naming_both(tmp_path, monkeypatch):
    _installed_wheel_lib(tmp_path, monkeypatch, {"library": build.library_path().name, "openvino": "2025.0.0"})
    installed = re.escape(importlib.metadata.version("openvino"))
    with pytest.raises(SlimkitError, match=rf"built against OpenVINO 2025\.0\.0, and OpenVINO {installed} is "
                                           rf"installed: pip install 'openvino==2025\.0\.0'"):
        build.require_library()


@pytest.mark.parametrize(("record", "message"), [
    ("{", r"operators\.json: unreadable"),
    ("[]", r"operators\.json: not a record"),
    (json.dumps({"library": "libslimkit_openvino-0000000000000000.so", "openvino": "2026.4.1"}),
     r"operators\.json: names no library file"),
    (json.dumps({"unavailable": "no C++17 compiler here"}),
     r"engine export is unavailable: .* because no C\+\+17 compiler here"),
])
def test_a_wheel_without_a_usable_library_says_why(tmp_path, monkeypatch, record, message):
    _installed_wheel_lib(tmp_path, monkeypatch, record)
    with pytest.raises(SlimkitError, match=message):
        build.require_library()


def test_a_machine_that_cannot_build_the_operators_is_told_why_before_any_compiling(monkeypatch):
    def compiled(command: list[str]) -> None:
        raise AssertionError(f"compiled: {command}")

    monkeypatch.setattr(build, "_run", compiled)
    monkeypatch.setattr(build.platform, "machine", lambda: "aarch64")
    assert "x86-64 Linux code" in (build.unbuildable_reason() or "") and "aarch64" in (build.unbuildable_reason() or "")
    with pytest.raises(SlimkitError, match=r"x86-64 Linux code .* aarch64"):
        build.build(force=True)
    monkeypatch.undo()
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert "C++17 compiler" in (build.unbuildable_reason() or "")
