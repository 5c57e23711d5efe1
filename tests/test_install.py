"""slimkit as a user installs it. The wheel (scripts/build-wheel.sh: the sdist, then the wheel built from that
sdist with the operators compiled in, tagged manylinux) goes with its engines extra into a fresh virtual
environment (torch's CPU wheel and the pinned packages, as the set-up installs them), where installed_wheel.py
compresses, exports and loads a model in plain OpenVINO from outside the checkout, with no compiler on PATH.
Where the operators cannot be built, the wheel is pure Python and its engine export says why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from slimkit.errors import SlimkitError
from slimkit.runtime.engine import build

ROOT = Path(__file__).resolve().parents[1]
PIP_NO_PYC = {**os.environ, "PIP_NO_COMPILE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # .pyc files as imported


def _run(command: list[str | Path], cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(part) for part in command], capture_output=True, text=True, cwd=cwd, env=env)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _build_wheel(dist: Path, env: dict[str, str] | None = None) -> list[Path]:
    _run(["bash", ROOT / "scripts" / "build-wheel.sh", dist, sys.prefix], env=env)
    return sorted(dist.iterdir())


@pytest.fixture
def fresh_environment(tmp_path: Path) -> Iterator[Path]:
    """A new virtual environment, removed afterwards (with torch and the pinned packages it holds 1.8 GB)."""
    env = tmp_path / "env"
    _run([sys.executable, "-m", "venv", env])
    yield env
    shutil.rmtree(env, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_wheel_installs_in_a_fresh_environment_and_exports_with_no_compiler_on_path(tmp_path,
                                                                                        fresh_environment):
    built = _build_wheel(tmp_path / "dist")
    (wheel,) = [path for path in built if path.name.endswith(".whl")]
    assert "-py3-none-manylinux_" in wheel.name and wheel.name.endswith("_x86_64.whl"), wheel.name
    assert any(path.name.endswith(".tar.gz") for path in built), built
    assert f"dist/{wheel.name}[engines]" in (ROOT / "README.md").read_text(), "the README installs another wheel"
    env = fresh_environment
    _run(["bash", ROOT / "scripts" / "install-torch.sh", env], env=PIP_NO_PYC)
    _run([env / "bin" / "python", "-m", "pip", "install", "-q", "-c", ROOT / "requirements" / "constraints.txt",
          f"{wheel}[engines]"], env=PIP_NO_PYC)
    user = tmp_path / "user"  # the user's own folder: no checkout on sys.path, nothing but the environment on PATH
    user.mkdir()
    shutil.copy(ROOT / "tests" / "installed_wheel.py", user)
    done = _run([env / "bin" / "python", "installed_wheel.py"], cwd=user,
                env={"PATH": str(env / "bin"), "HOME": str(user), "SLIMKIT_CACHE_DIR": str(user / "cache")})
    assert "agree with torch" in done.stdout and "the deployable folder" in done.stdout, done.stdout


@pytest.mark.slow
def test_where_the_operators_cannot_be_built_the_wheel_is_pure_python_and_its_engine_says_why(tmp_path,
                                                                                               monkeypatch):
    built = _build_wheel(tmp_path / "dist", env={**os.environ, "CXX": "no-such-compiler"})
    (wheel,) = [path for path in built if path.name.endswith(".whl")]
    assert wheel.name.endswith("-py3-none-any.whl"), wheel.name
    with zipfile.ZipFile(wheel) as archive:
        assert not [name for name in archive.namelist() if name.endswith(".so")]
        record = json.loads(archive.read("slimkit/runtime/engine/lib/operators.json"))
    assert set(record) == {"unavailable"} and "C++17 compiler" in record["unavailable"], record
    installed = tmp_path / "lib"  # the wheel's lib/ as an installation holds it
    installed.mkdir()
    (installed / build.PACKAGED_RECORD).write_text(json.dumps(record))
    monkeypatch.setattr(build, "PACKAGED", installed)
    with pytest.raises(SlimkitError, match=r"engine export is unavailable: .*C\+\+17 compiler"):
        build.require_library()
