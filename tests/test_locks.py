"""One writer per folder: a run folder or export folder that another live process is writing is refused with
exit 2 and a message naming that process; the lock of a process that died (kill -9) is taken over and said
so. The writers are real `slimkit` processes, frozen with SIGSTOP where the test needs one alive."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slimkit.cli import main

RECIPE = {"name": "locks", "model": {"name": "lenet", "width": 0.5}, "data": {"name": "digits", "batch_size": 64},
          "baseline": {"epochs": 6, "lr": 0.05}, "train": {"epochs": 1, "lr": 0.02},
          "measure": {"batch_sizes": [1], "repeats": 1, "warmup": 1}}


def _slimkit(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "slimkit.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _wait_for(path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not path.exists():
        assert process.poll() is None, "the writer ended before it got there"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture
def frozen_run(tmp_path):
    """A `slimkit run` into tmp_path/run, stopped (SIGSTOP) after its first checkpoint: alive, mid-run."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    out = tmp_path / "run"
    writer = _slimkit("run", str(recipe), "--out", str(out), "--no-progress")
    try:
        _wait_for(out / "dense" / "checkpoint.pt", writer)
        writer.send_signal(signal.SIGSTOP)
        yield recipe, out, writer
    finally:
        writer.kill()
        writer.wait()


def test_a_second_run_into_a_folder_being_written_is_refused_naming_the_owner(frozen_run, capsys):
    recipe, out, writer = frozen_run
    for extra in ([], ["--resume"]):  # a fresh run, and a resume of the one that is still running
        assert main(["run", str(recipe), "--out", str(out), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err
        assert f"{out} is in use by the run of process {writer.pid} on {socket.gethostname()}" in err
    assert not (out / "compressed").exists()  # the second writer wrote nothing


def test_the_lock_of_a_killed_run_is_taken_over_and_reported(frozen_run, capsys):
    recipe, out, writer = frozen_run
    writer.kill()
    writer.wait()
    assert main(["run", str(recipe), "--out", str(out), "--no-progress", "--resume"]) == 0
    printed = capsys.readouterr()
    assert f"took over the lock of the run of process {writer.pid}" in printed.out + printed.err
    assert (out / "metrics.json").exists() and not (out / ".slimkit.lock").exists()


def test_an_export_folder_being_written_is_refused(tmp_path, capsys):
    folder = tmp_path / "engine"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom slimkit.locks import FolderLock\n"
        f"with FolderLock({str(folder)!r}, 'export'):\n    print('held', flush=True)\n    time.sleep(120)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["export", "lenet", "--engine", "openvino", "--out", str(folder)]) == 2
        assert f"{folder} is in use by the export of process {holder.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in folder.iterdir()) == [".slimkit.lock"]
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    from slimkit.errors import SlimkitError
    from slimkit.locks import FolderLock

    folder = tmp_path / "run"
    folder.mkdir()
    owner = {"pid": os.getpid(), "host": "elsewhere.example", "started": time.time(), "command": "slimkit run r.yaml",
             "purpose": "run"}
    (folder / ".slimkit.lock").write_text(json.dumps(owner))
    with pytest.raises(SlimkitError, match=r"in use by the run of process \d+ on elsewhere.example .*"
                                           r"if that process no longer runs, delete .*\.slimkit\.lock"):
        FolderLock(folder, "run").__enter__()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times are read from /proc")
def test_a_lock_naming_a_reused_pid_is_taken_over(tmp_path):
    """The pid is alive (this process) but started later than the lock says: it is not the owner."""
    from slimkit.locks import FolderLock

    folder = tmp_path / "run"
    folder.mkdir()
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": 1.0, "command": "slimkit run r.yaml",
             "purpose": "run"}
    (folder / ".slimkit.lock").write_text(json.dumps(owner))
    with FolderLock(folder, "run") as lock:
        assert lock.took_over is not None and lock.took_over.started == 1.0
        assert json.loads((folder / ".slimkit.lock").read_text())["pid"] == os.getpid()
    assert not (folder / ".slimkit.lock").exists()
