"""OpenVINO engines leave the process able to run Python signal handlers (Ctrl-C, timeouts, the SIGCHLD of a
DataLoader worker's exit): each OpenVINO Core swaps the thread's alternate signal stack, so slimkit keeps one."""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("openvino")

CHILD = textwrap.dedent("""
    import gc, os, signal, sys, tempfile
    from pathlib import Path
    import torch
    from slimkit.runtime.engine.dense_engines import OpenVinoModel

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    path = Path(tempfile.mkdtemp()) / "model.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 8, 8),), str(path), input_names=["x"], dynamo=False)
    first = OpenVinoModel(path, (1, 3, 8, 8), threads=1)
    second = OpenVinoModel(path, (2, 3, 8, 8), threads=2)
    first(torch.randn(1, 3, 8, 8)), second(torch.randn(2, 3, 8, 8))
    del first  # dropped in the order they were made
    gc.collect()
    del second
    gc.collect()
    signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))
    os.kill(os.getpid(), signal.SIGUSR1)
""")


def test_python_signal_handlers_still_run_after_engines_are_dropped():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"exit {done.returncode} (-11 is SIGSEGV): {done.stderr[-2000:]}"
    assert done.stdout.strip() == "handled"
