"""Killing a run, for the resume tests: a callback that raises after n epochs (in-process), and a real kill -9
of a child process at a chosen file write (`run_killed_at_write`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


class Interrupt(Exception):
    pass


def interrupt_after(n):
    calls = []

    def callback(record):
        calls.append(record)
        if len(calls) == n:
            raise Interrupt

    return callback


def run_killed_at_write(recipe: dict, out: Path, name: str, nth: int = 1, resume: bool = False) -> None:
    """Run `recipe` into `out` in a child process that kills itself with SIGKILL as it is about to rename its
    `nth` complete temporary file onto a file called `name`: the moment a kill leaves the most behind (a full
    temporary file, the target not yet replaced). Fails unless the child died that way."""
    args = [sys.executable, __file__, json.dumps(recipe), str(out), name, str(nth), "resume" if resume else "new"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, f"the child was not killed at {name}:\n{done.stderr[-3000:]}"


def _child(recipe: str, out: str, name: str, nth: str, mode: str) -> None:
    import torch

    from slimkit.pipeline import run_recipe
    from slimkit.recipe import Recipe

    torch.set_num_threads(1)  # as the test suite runs, so the resumed run can match the uninterrupted one
    replace, seen = os.replace, []

    def replace_or_die(src, dst):
        if Path(dst).name == name:
            seen.append(dst)
            if len(seen) == int(nth):
                os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst)

    os.replace = replace_or_die
    run_recipe(Recipe.from_dict(json.loads(recipe)), Path(out), resume=mode == "resume", progress=False)


if __name__ == "__main__":
    _child(*sys.argv[1:])
