"""`slimkit bench` keeps its temporary files inside its output folder, never in $TMPDIR (issue 30: a killed
bench left 1.4 MB in $TMPDIR), and the work folder a killed bench left is removed by the next bench there. The
bench is a real `slimkit` process, killed with SIGKILL once its first exported model is on disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slimkit.cli import main
from slimkit.environment import ALLOCATOR_ENV
from slimkit.runtime.bench import WORK, work_folder

pytest.importorskip("onnxruntime")

BENCH = ["bench", "lenet", "--in-channels", "1", "--input-size", "8", "--batch-sizes", "1", "--repeats", "1",
         "--no-compile"]


def _exported(*folders: Path) -> Path | None:
    """The dense model's ONNX export, wherever a bench wrote it under `folders` (None while a folder changes
    under the search)."""
    try:
        return next((found for folder in folders for found in folder.rglob("dense-fp32.onnx")), None)
    except OSError:
        return None


def test_a_killed_bench_leaves_nothing_in_tmpdir_and_the_next_bench_removes_its_work(tmp_path, monkeypatch, capsys):
    tmpdir, out = tmp_path / "tmp", tmp_path / "out"
    tmpdir.mkdir()
    bench = subprocess.Popen([sys.executable, "-m", "slimkit.cli", *BENCH, "--out", str(out)],
                             env={**os.environ, **ALLOCATOR_ENV, "TMPDIR": str(tmpdir)},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while _exported(out, tmpdir) is None:
            assert bench.poll() is None, f"the bench ended before its export: {bench.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, "the bench never exported its dense model"
            time.sleep(0.02)
        bench.send_signal(signal.SIGKILL)
    finally:
        bench.kill()
        bench.wait()
    # nothing in $TMPDIR but torch's compile cache, which importing torch._dynamo creates there (a meta-device
    # forward imports it as every zoo model is built): a folder of torch's, shared by every run, empty here
    assert [p for p in tmpdir.rglob("*") if not (p.relative_to(tmpdir).parts[0].startswith("torchinductor_")
                                                 and p.is_dir())] == []
    left = out / f"{WORK}{bench.pid}"
    assert _exported(left) is not None, sorted(out.rglob("*"))  # where the killed bench worked: its output folder

    for key, value in ALLOCATOR_ENV.items():  # already in force, so the command does not re-execute itself
        monkeypatch.setenv(key, value)
    assert main([*BENCH, "--no-engines", "--out", str(out)]) == 0, capsys.readouterr().err
    printed = " ".join(capsys.readouterr().out.split())  # as one line, however the console wrapped it
    assert f"took over the lock of the bench of process {bench.pid}" in printed
    assert not list(out.glob(f"{WORK}*")) and (out / "bench.json").exists()


def test_a_work_folder_is_its_process_own_and_removed_after(tmp_path):
    live = tmp_path / f"{WORK}1"  # pid 1 always runs: another live bench's folder stays
    live.mkdir()
    not_a_pid = tmp_path / f"{WORK}spare"
    not_a_pid.mkdir()
    before = os.environ.get("TMPDIR")
    with work_folder(tmp_path) as work:
        import tempfile

        assert work == tmp_path / f"{WORK}{os.getpid()}" and Path(tempfile.gettempdir()) == work
        assert os.environ["TMPDIR"] == str(work)  # where native libraries put their files
        (work / "model.onnx").write_bytes(b"x")
    assert not work.exists() and live.exists() and not_a_pid.exists()
    assert Path(tempfile.gettempdir()) != work and os.environ.get("TMPDIR") == before
