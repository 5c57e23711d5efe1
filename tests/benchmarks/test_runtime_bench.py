"""benchmarks/runtime.py's command line: a form it does not have is refused by name before anything is built
or timed (a restricted run must never quietly measure fewer forms than asked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[2] / "benchmarks"


def test_an_unknown_form_is_refused_naming_it() -> None:
    run = subprocess.run([sys.executable, str(BENCH / "runtime.py"), "--archs", "resnet20",
                          "--forms", "bnn", "sparse99_int8"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert "no such form of resnet20: sparse99_int8" in run.stderr
