"""Kernel choice by measurement (engine/cpp/kernel_tuner.hpp): every kernel of every operator is exact on its
own, the tuner keeps its choices in a cache keyed by the CPU, a damaged cache is never trusted, and the switches
(SLIMKIT_ISA, SLIMKIT_KERNEL) work the same on any x86-64 CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from slimkit.errors import SlimkitError
from slimkit.runtime.engine import build

pytest.importorskip("openvino")

CHECK = Path(__file__).with_name("kernel_check.py")
BUILD_OF = {"generic": "generic", "avx2": "avx2"}  # every other kernel name starts with its build: "avx512/..."
KERNELS = {"binary": ["generic", "avx2", "avx512/ymm", "avx512/zmm"],
           "sparse": ["generic", "avx2", "avx512"],
           "int8": list(build.INT8_KERNELS),
           "int8-linear": list(build.INT8_KERNELS)}  # QuantSparseLinear runs QuantSparseConv2d's kernels


def _check(family: str, folder: Path, base: dict[str, str] | None = None,
           **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), family, str(folder)], capture_output=True, text=True,
                          env={**(base or os.environ), "SLIMKIT_CACHE_DIR": str(folder / "cache"), **env}, timeout=600)


# The cache tests need kernels to choose among, so they run with every build this CPU has, whatever build the
# suite was capped to (SLIMKIT_ISA=generic leaves one int8 kernel, and nothing to time).
UNCAPPED = {key: value for key, value in os.environ.items() if key != "SLIMKIT_ISA"}


def _builds(env: dict[str, str]) -> list[str]:
    code = "from slimkit.runtime.engine import build; print(' '.join(build.runnable_builds()))"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120).stdout.split()


@pytest.mark.parametrize(("family", "kernel"), [(f, k) for f, ks in KERNELS.items() for k in ks])
def test_every_kernel_is_exact_where_the_cpu_runs_it_and_refused_by_name_where_not(tmp_path, family, kernel):
    """Each kernel alone (SLIMKIT_KERNEL names it) against the reference. On a CPU without the kernel's build the
    same run must fail with an error naming the switch: never a silent fall-back to another kernel."""
    done = _check(family, tmp_path, SLIMKIT_KERNEL=kernel)
    if BUILD_OF.get(kernel, kernel.split("/")[0]) in build.runnable_builds():
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.splitlines()[-1]) == {"ok": True, "kernels": [kernel]}
    else:
        assert done.returncode != 0
        assert "matches SLIMKIT_KERNEL" in done.stderr, done.stderr[-3000:]


def test_the_tuner_times_the_kernels_once_and_a_new_process_reads_its_choice_from_the_cache(tmp_path):
    first = _check("int8", tmp_path, UNCAPPED)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout.splitlines()[-1])["ok"]
    files = list((tmp_path / "cache").glob("kernels-*.tsv"))
    runnable = [k for k in KERNELS["int8"] if BUILD_OF.get(k, k.split("/")[0]) in _builds(UNCAPPED)]
    if len(runnable) == 1:  # a CPU without AVX2: one kernel, nothing to choose, so nothing timed or kept
        assert not files
        return
    assert len(files) == 1
    lines = files[0].read_text().splitlines()
    assert lines[0].startswith("# slimkit kernel choices\t")
    rows = [line.split("\t") for line in lines[1:]]
    assert rows and all(r[0].startswith("QuantSparseConv2d|") and r[1] in runnable for r in rows)
    if len(runnable) > 1:  # each row says what every kernel took, and the fastest won
        for _, kernel, times in rows:
            us = {name: float(t) for name, t in (entry.split("=") for entry in times.split(","))}
            assert set(us) == set(runnable) and us[kernel] == min(us.values())
    second = _check("int8", tmp_path, UNCAPPED)
    assert second.returncode == 0 and files[0].read_text().splitlines() == lines  # nothing new to time


def test_a_damaged_cache_is_never_trusted(tmp_path):
    """Garbage, overlong lines, unknown kernels and another CPU's header are skipped; every layer is still exact."""
    assert _check("int8", tmp_path, UNCAPPED).returncode == 0
    kept = list((tmp_path / "cache").glob("kernels-*.tsv"))
    if len(_builds(UNCAPPED)) == 1:  # a CPU without AVX2 runs one kernel per operator and keeps no cache
        assert not kept
        return
    (cache,) = kept
    header, *rows = cache.read_text().splitlines()
    forged = [header, *(f"{r.split(chr(9))[0]}\tavx9000/imaginary\t" for r in rows), "x" * 5000, "\x00\x01\t\t",
              "no tabs at all"]
    cache.write_text("\n".join(forged) + "\n")
    done = _check("int8", tmp_path, UNCAPPED)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["ok"]
    assert "avx9000" not in "".join(json.loads(done.stdout.splitlines()[-1])["kernels"])
    cache.write_text("# slimkit kernel choices\tsome other CPU\n" + "\n".join(rows) + "\n")
    assert _check("int8", tmp_path, UNCAPPED).returncode == 0


def test_isa_caps_the_builds_and_an_unknown_value_is_an_error_naming_it():
    every = _builds(UNCAPPED)
    for cap in ("generic", "avx2", "avx512"):
        assert _builds({**UNCAPPED, "SLIMKIT_ISA": cap}) == (every[: every.index(cap) + 1] if cap in every else every)
    code = "from slimkit.runtime.engine import build; build.runnable_builds()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**UNCAPPED, "SLIMKIT_ISA": "avx1024"}, timeout=120)
    assert done.returncode != 0 and "SLIMKIT_ISA=avx1024" in done.stderr


def test_the_runnable_builds_follow_the_cpus_own_flags():
    """The library's view of the CPU agrees with the kernel's: no build is offered that the CPU lacks."""
    from slimkit.environment import cpu_info

    isa = set(cpu_info()["isa"])
    expected = ["generic", *(["avx2"] if "avx2" in isa else []),
                *(["avx512"] if {"avx512f", "avx512bw", "avx512vl", "avx512_vpopcntdq", "avx512_vnni"} <= isa else [])]
    assert _builds(UNCAPPED) == expected


def test_int8_peaks_exist_for_the_kernels_the_cpu_runs():
    builds = build.runnable_builds()
    for kernel in KERNELS["int8"]:
        peak = build.int8_peak(kernel, 1, 0.05)
        runs = BUILD_OF.get(kernel, kernel.split("/")[0]) in builds
        assert (peak is not None and peak > 1e8) if runs else peak is None  # any x86-64 core: > 1e8 multiplies/s
    with pytest.raises(SlimkitError, match="avx9000"):
        build.int8_peak("avx9000", 1, 0.01)
