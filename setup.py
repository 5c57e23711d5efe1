"""The one build step pyproject.toml cannot declare: a wheel carries slimkit's OpenVINO operators, compiled when
the wheel is built (from a checkout or from the sdist, which carries the C++), so an installed slimkit needs no
compiler. engine/build.py compiles them, as it does the development build: the same flags, digest rule and
checks. Where this machine cannot build them (not x86-64 Linux, no compiler, no OpenVINO), the wheel is pure
Python and its engine export says why, instead of the install failing inside a compiler.

The library has no Python ABI (OpenVINO loads it, ctypes reads it), so the wheel is py3-none-<platform>: one
wheel for every Python slimkit supports.
"""

from __future__ import annotations

import importlib
import sys
import types
from functools import cache
from pathlib import Path
from typing import Any

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py
from setuptools.errors import SetupError

SOURCE = Path(__file__).resolve().parent / "src"
LIBRARY_FOLDER = "slimkit/runtime/engine/lib"  # build.PACKAGED, inside the built package


@cache
def operator_build() -> Any:
    """slimkit.runtime.engine.build without running slimkit's package __init__ files on the way (they import
    torch, which a wheel build does not install): each is an empty package module over its source folder."""
    for name in ("slimkit", "slimkit.runtime", "slimkit.runtime.engine"):
        package = types.ModuleType(name)
        package.__path__ = [str(SOURCE.joinpath(*name.split(".")))]
        sys.modules[name] = package
    return importlib.import_module("slimkit.runtime.engine.build")


class BuildWithOperators(build_py):
    """build_py, then the operator library (or the reason there is none) into the built package's lib/."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # a checkout: `make` builds the development library into the virtual environment
            return
        build = operator_build()
        if build.unbuildable_reason() is None:
            self._check_pin(build.openvino_release())
        reason = build.package_into(Path(self.build_lib, LIBRARY_FOLDER))
        if reason is not None:
            self.warn(f"slimkit is built without its OpenVINO operators (engine export will say so): {reason}")

    def _check_pin(self, building_against: str) -> None:
        """The wheel requires (in its engines extra) the OpenVINO release its library is built against."""
        pinned = [r.split("==")[1].split(";")[0].strip() for r in self.distribution.extras_require.get("engines", [])
                  if r.replace(" ", "").startswith("openvino==")]
        if pinned != [building_against]:
            raise SetupError(f"slimkit's operators would be built against OpenVINO {building_against}, but its "
                             f"engines extra pins openvino {pinned or 'to no exact release'}: build with the pinned "
                             f"release, or change the pin in pyproject.toml (build-system and engines) together")


class OperatorDistribution(Distribution):
    """A distribution with native code where the operators are built: its wheel is a platform wheel, installed
    into platlib, beside the openvino package its library finds through build.PACKAGED_RPATH."""

    def has_ext_modules(self) -> bool:
        return operator_build().unbuildable_reason() is None


class PlatformWheel(bdist_wheel):
    """py3-none-linux_x86_64 (no Python ABI in the library) where it is built, py3-none-any where it cannot be."""

    def get_tag(self) -> tuple[str, str, str]:
        python, abi, platform = super().get_tag()
        return (python, abi, platform) if self.root_is_pure else ("py3", "none", platform)


setup(distclass=OperatorDistribution, cmdclass={"build_py": BuildWithOperators, "bdist_wheel": PlatformWheel})
