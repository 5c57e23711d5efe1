#!/usr/bin/env bash
# Installs torch 2.13.0's CPU build into a virtual environment, before slimkit and its pinned packages.
# Usage: scripts/install-torch.sh VENV_DIR
# It never installs a CUDA build of torch: it takes the machine's local CPU wheel when one lies in
# /opt/wheels, and otherwise asks PyTorch's CPU-only index. The set-up (setup-env.sh) and the install test
# (tests/test_install.py) both use it.
set -euo pipefail
venv="$1"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

if ! "$venv/bin/python" -c 'import torch, sys; sys.exit(0 if torch.__version__.split("+")[0] == "2.13.0" else 1)' 2>/dev/null; then
  wheel=$(ls /opt/wheels/torch-2.13.0+cpu-cp3*-manylinux*.whl 2>/dev/null | head -n 1 || true)
  if [ -n "$wheel" ]; then
    "${pip[@]}" install -q "$wheel"
  else
    # the exact CPU build by its local version; PyTorch's CPU index is an extra index beside the default one
    "${pip[@]}" install -q "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
fi
