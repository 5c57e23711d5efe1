"""The package's layering: a registry that refuses duplicates, imports that point one way, a light import."""

import subprocess
import sys
from pathlib import Path

import pytest

from slimkit.methods import MethodConfig, method_configs, register_method
from slimkit.sparsity import GradualMagnitudeConfig

ROOT = Path(__file__).parents[1]


def test_a_method_name_registered_twice_is_an_error():
    class Again(GradualMagnitudeConfig):
        pass

    with pytest.raises(ValueError, match="'gmp' is already registered by GradualMagnitudeConfig"):
        register_method(Again)(object)
    assert method_configs("prune")["gmp"] is GradualMagnitudeConfig


def test_a_config_without_a_known_kind_is_an_error():
    class Odd(MethodConfig):
        kind = "shrink"

    with pytest.raises(ValueError, match="kind must be one of"):
        register_method(Odd)(object)


def test_the_import_graph_has_no_cycle_and_no_upward_import():
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_imports.py")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no cycle, no upward import" in result.stdout


def test_the_import_check_catches_an_upward_import(tmp_path):
    package = tmp_path / "slimkit"
    for room, source in {"errors": "", "recipe": "", "methods": "from slimkit import recipe\n"}.items():
        (package / room).parent.mkdir(parents=True, exist_ok=True)
        (package / f"{room}.py").write_text(source)
    (package / "__init__.py").write_text("")
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "check_imports.py"), str(package)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "slimkit.methods -> slimkit.recipe" in result.stdout


def test_import_slimkit_loads_neither_numba_nor_matplotlib():
    code = "import slimkit, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'matplotlib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


RUNTIME_TREE = {  # a synthetic runtime that keeps its sub-rooms' tiers: layouts below two backends, bench above
    "runtime/__init__.py": "from slimkit.runtime.eager.deploy import deploy\n",
    "runtime/layouts.py": "",
    "runtime/eager/__init__.py": "",
    "runtime/eager/deploy.py": "from slimkit.runtime.layouts import GROUP\n",
    "runtime/engine/__init__.py": "",
    "runtime/engine/export.py": "from ..layouts import GROUP\n",
    "runtime/bench.py": "from slimkit.runtime.eager.deploy import deploy\nfrom slimkit.runtime.engine import export\n",
}


def _check_runtime(tmp_path, changes: dict[str, str]) -> subprocess.CompletedProcess:
    package = tmp_path / "slimkit"
    for path, source in {"__init__.py": "", **RUNTIME_TREE, **changes}.items():
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(source)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "check_imports.py"), str(package)],
                          capture_output=True, text=True)


@pytest.mark.parametrize(("changes", "message"), [
    ({}, None),
    ({"runtime/engine/export.py": "from slimkit.runtime.eager.deploy import deploy\n"},
     "slimkit.runtime.engine.export -> slimkit.runtime.eager.deploy"),
    ({"runtime/eager/deploy.py": "from ..engine import export\n"},
     "slimkit.runtime.eager.deploy -> slimkit.runtime.engine.export"),
    ({"runtime/layouts.py": "import slimkit.runtime.eager.deploy\n"},
     "upward import runtime.layouts (tier 0) -> runtime.eager (tier 1)"),
    ({"runtime/eager/deploy.py": "from slimkit.runtime import deploy\n"},
     "import of the runtime package (its __init__, above its sub-rooms) from runtime.eager"),
    ({"runtime/shared.py": ""}, "sub-rooms of runtime not placed in SUBLAYERS['runtime'] (add each to a tier): shared"),
])
def test_the_import_check_keeps_runtimes_backends_apart(tmp_path, changes, message):
    """eager and engine never import each other, layouts (below both) imports neither, and bench (above both)
    may import both."""
    result = _check_runtime(tmp_path, changes)
    if message is None:
        assert result.returncode == 0, result.stdout
    else:
        assert result.returncode == 1 and message in result.stdout, result.stdout
