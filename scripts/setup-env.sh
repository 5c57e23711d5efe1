#!/usr/bin/env bash
# Creates the project's virtual environment with pinned packages and the CPU build of torch
# (scripts/install-torch.sh: never a CUDA build), slimkit installed editable, and its operators built.
# Usage: scripts/setup-env.sh VENV_DIR
set -euo pipefail
venv="${1:-.venv}"
here="$(cd "$(dirname "$0")/.." && pwd)"

python=""
for candidate in python3.11 python3; do
  if command -v "$candidate" >/dev/null 2>&1 &&
     "$candidate" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)'; then
    python="$candidate"; break
  fi
done
[ -n "$python" ] || { echo "setup: Python 3.11 or newer is required (python3.11 or python3 on PATH)" >&2; exit 1; }

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

bash "$here/scripts/install-torch.sh" "$venv"

"${pip[@]}" install -q -c "$here/requirements/constraints.txt" -e "$here[dev]"

# slimkit's OpenVINO operators (C++, against the openvino wheel's headers; one build serves every x86-64 CPU)
"$venv/bin/python" -m slimkit.runtime.engine.build >/dev/null

# Fashion-MNIST for the demo comes from Debian's package where apt-get can install it; the demo
# falls back to the bundled digits data set (and says so) where it cannot.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || echo "setup: could not install dataset-fashion-mnist; the demo will use digits" >&2
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || echo "setup: could not install dataset-fashion-mnist; the demo will use digits" >&2
  fi
fi
