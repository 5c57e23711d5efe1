"""slimkit as a user installs it. The wheel (scripts/build-wheel.sh: the sdist, then the wheel built from that
sdist with the operators compiled in, tagged manylinux) goes with its engines extra into a fresh virtual
environment (torch's CPU wheel and the pinned packages, as the set-up installs them), where installed_wheel.py
compresses a model (`slimkit run`), exports it (`slimkit export`) and runs it in plain OpenVINO, from outside the
checkout, with no compiler on PATH. Where the operators cannot be built, the wheel is pure Python and its engine
export says why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
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


def _check_auditwheel_show(wheel: Path) -> None:
    """`auditwheel show` finds the wheel's symbols within its manylinux tag, and nothing else standing between
    the wheel and that tag but OpenVINO's and TBB's libraries, which it leaves to the openvino package (the
    reason its overall tag stays linux_x86_64, docs/design.md)."""
    shown = json.loads(_run([sys.executable, "-m", "auditwheel", "show", "--json", wheel]).stdout)
    assert shown["sym_tag"] == wheel.name.removesuffix(".whl").rsplit("-", 1)[1], shown
    assert sorted(shown["external_libs"]) and all(name.startswith(("libopenvino.so.", "libtbb.so."))
                                                  for name in shown["external_libs"]), shown["external_libs"]
    for tag, upgrade in shown["policy_upgrades"].items():
        assert set(upgrade) == {"libs_to_eliminate"}, (tag, upgrade)
        assert set(upgrade["libs_to_eliminate"]) <= set(shown["external_libs"]), (tag, upgrade)
    assert not shown["unsupported_isa"], shown


MEMORY = Path("/dev/shm")
ENVIRONMENT_BYTES = 2 * 10**9  # torch and the pinned packages, installed: 1.8 GB in 30,000 files
SCRATCH_PREFIX = "slimkit-install-test-"


def _room_in_memory() -> bool:
    """Whether the environment fits in memory twice over: /dev/shm's room, and the memory the kernel has free."""
    if not MEMORY.is_dir():
        return False
    available = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return min(shutil.disk_usage(MEMORY).free, int(available["MemAvailable"].split()[0]) * 1024) > 2 * ENVIRONMENT_BYTES


def _remove_environments_of_dead_tests() -> None:
    """A test killed before its clean-up leaves its environment in memory: remove those whose process is gone."""
    for stale in MEMORY.glob(f"{SCRATCH_PREFIX}*"):
        pid = int(stale.name.removeprefix(SCRATCH_PREFIX).split("-")[0])
        if not Path(f"/proc/{pid}").exists():
            shutil.rmtree(stale, ignore_errors=True)


@pytest.fixture
def fresh_environment(tmp_path: Path) -> Iterator[Path]:
    """A new virtual environment, removed afterwards. It lives in memory (/dev/shm) where there is room: on this
    project's machines (CI's kind), deleting its 30,000 files from disk took 106 s, from memory 1 s."""
    if MEMORY.is_dir():
        _remove_environments_of_dead_tests()
    root = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-",
                                 dir=MEMORY if _room_in_memory() else tmp_path))
    try:
        env = root / "env"
        _run([sys.executable, "-m", "venv", env])
        yield env
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_wheel_installs_in_a_fresh_environment_and_exports_with_no_compiler_on_path(tmp_path,
                                                                                        fresh_environment):
    env = fresh_environment
    # torch's CPU wheel goes into the environment while the wheel builds (the one is unpacking, the other compiling)
    installing_torch = subprocess.Popen(["bash", ROOT / "scripts" / "install-torch.sh", env], env=PIP_NO_PYC,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        built = _build_wheel(tmp_path / "dist")
    finally:
        _, torch_errors = installing_torch.communicate()
    assert installing_torch.returncode == 0, f"install-torch.sh failed:\n{torch_errors[-3000:]}"
    (wheel,) = [path for path in built if path.name.endswith(".whl")]
    assert "-py3-none-manylinux_" in wheel.name and wheel.name.endswith("_x86_64.whl"), wheel.name
    assert any(path.name.endswith(".tar.gz") for path in built), built
    _check_auditwheel_show(wheel)
    assert f"dist/{wheel.name}[engines]" in (ROOT / "README.md").read_text(), "the README installs another wheel"
    _run([env / "bin" / "python", "-m", "pip", "install", "-q", "-c", ROOT / "requirements" / "constraints.txt",
          f"{wheel}[engines]"], env=PIP_NO_PYC)
    user = tmp_path / "user"  # the user's own folder: no checkout on sys.path, nothing but the environment on PATH
    user.mkdir()
    shutil.copy(ROOT / "tests" / "installed_wheel.py", user)
    done = _run([env / "bin" / "python", "installed_wheel.py"], cwd=user,
                env={"PATH": str(env / "bin"), "HOME": str(user), "SLIMKIT_CACHE_DIR": str(user / "cache")})
    assert "agree with torch in plain OpenVINO" in done.stdout, done.stdout


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
