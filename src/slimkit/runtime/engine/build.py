"""Builds and finds slimkit's OpenVINO operator library (the C++ in engine/cpp), compiled by g++ against the
headers and libraries the `openvino` wheel ships.

The set-up script builds it (`python -m slimkit.runtime.engine.build`); nothing is compiled on import. The kernels
(cpp/kernels) are compiled once per instruction set (AVX-512 with VL, VPOPCNTDQ and VNNI; AVX2; portable), the
operators (one file each), the dispatch between those builds and the extension's entry point (cpp/*.cpp) once;
every operator times the kernels the CPU runs on its first call of a shape and keeps the fastest (cpp/kernel_tuner.hpp),
so one build serves every x86-64 machine and no build is chosen because a CPU flag exists. Every
warning fails the build (-Wall -Wextra -Werror; OpenVINO's headers are system headers, whose warnings are
not ours). The file name carries a digest of every source, the flags, the compiler and the OpenVINO version,
so a changed source, flag or engine never loads a stale build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from slimkit.errors import SlimkitError

SOURCES = Path(__file__).with_name("cpp")  # the operators, the dispatch and the entry point: compiled once
KERNELS = SOURCES / "kernels"  # kernels_<isa>.cpp and the kernel headers they include: compiled once per ISA
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-ffp-contract=off",  # no FMA contraction: outputs stay bit-exact
         "-Wall", "-Wextra", "-Werror"]
OPENVINO_DEFINES = ["-DOV_THREAD=OV_THREAD_TBB_ADAPTIVE", "-D_GLIBCXX_USE_CXX11_ABI=1"]  # as the wheel's CMake sets
OPENVINO_INCLUDE = "-isystem"  # OpenVINO's headers as system headers: -Werror applies to slimkit's code alone
ISA_FLAGS = {"avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vpopcntdq", "-mavx512vnni", "-mfma"],
             "avx2": ["-mavx2", "-mpopcnt", "-mfma"], "generic": []}


def _openvino_dir() -> Path:
    try:
        import openvino
    except ImportError:
        raise SlimkitError("slimkit's engine operators need OpenVINO: pip install 'slimkit[engines]'") from None
    return Path(openvino.__file__).parent


def _compiler() -> str:
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise SlimkitError("building slimkit's OpenVINO operators needs a C++17 compiler (g++ or $CXX) on PATH")
    return compiler


def _runtime_library(openvino_dir: Path, stem: str) -> Path:
    found = sorted((openvino_dir / "libs").glob(f"{stem}.so.*"))
    if not found:
        raise SlimkitError(f"the openvino wheel at {openvino_dir} has no libs/{stem}.so.*; reinstall openvino")
    return found[0]


def library_path() -> Path:
    """Where the library for these sources, this compiler and this OpenVINO lives (built or not)."""
    import openvino

    digest = hashlib.sha256()
    for source in sorted(SOURCES.rglob("*.[ch]pp")):
        digest.update(source.relative_to(SOURCES).as_posix().encode() + source.read_bytes())
    version = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, check=True).stdout
    settings = repr((FLAGS, OPENVINO_DEFINES, OPENVINO_INCLUDE, ISA_FLAGS))
    digest.update(version.encode() + openvino.__version__.encode() + settings.encode())
    return Path(sys.prefix) / "lib" / "slimkit" / f"libslimkit_openvino-{digest.hexdigest()[:16]}.so"


def build(force: bool = False) -> Path:
    """Compile the library unless this exact build exists; the file appears atomically (built in a temporary
    folder, then renamed), so a killed build never leaves a half-written library behind."""
    target = library_path()
    if target.exists() and not force:
        return target
    ov_dir = _openvino_dir()
    compiler = _compiler()
    target.parent.mkdir(parents=True, exist_ok=True)
    build_id = f"-DSLIMKIT_BUILD_ID=\"{target.stem}\""  # the kernel tuner's cache belongs to this build alone
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        # (compile command, the ISA whose object must define no code shared with other builds)
        jobs: list[tuple[list[str], str | None]] = []
        for isa, flags in ISA_FLAGS.items():
            jobs.append(([compiler, *FLAGS, *flags, "-c", str(KERNELS / f"kernels_{isa}.cpp"), "-o",
                          str(Path(tmp) / f"kernels_{isa}.o")], isa))
        for source in sorted(SOURCES.glob("*.cpp")):
            jobs.append(([compiler, *FLAGS, *OPENVINO_DEFINES, build_id, OPENVINO_INCLUDE, str(ov_dir / "include"),
                          "-c", str(source), "-o", str(Path(tmp) / f"{source.stem}.o")], None))
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # g++ runs in processes of its own
            list(pool.map(lambda job: _run(job[0]), jobs))
        objects = [Path(command[-1]) for command, _ in jobs]
        for command, kernels_isa in jobs:
            if kernels_isa is not None:
                _refuse_shared_code(Path(command[-1]), kernels_isa)
        built = Path(tmp) / target.name
        _run([compiler, "-shared", "-o", str(built), *map(str, objects),
              *(str(_runtime_library(ov_dir, lib)) for lib in ("libopenvino", "libopenvino_onnx_frontend", "libtbb")),
              f"-Wl,-rpath,{ov_dir / 'libs'}"])
        os.replace(built, target)
    for stale in target.parent.glob("libslimkit_openvino-*.so"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def _refuse_shared_code(kernels: Path, isa: str) -> None:
    """Refuse an instruction-set object that defines weak symbols outside its own namespace (an out-of-line
    std::vector member, say): the linker keeps one copy of each for the whole library, possibly the AVX-512
    one, which an AVX2-only CPU cannot run (it dies with SIGILL)."""
    done = subprocess.run(["nm", "-C", "--defined-only", str(kernels)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SlimkitError(f"building slimkit's OpenVINO operators: nm could not list {kernels.name}: {done.stderr}")
    symbols = [line.split(" ", 2)[1:] for line in done.stdout.splitlines() if line.count(" ") >= 2]
    shared = [name for kind, name in symbols if kind in ("W", "V", "u") and not name.startswith(f"slimkit::{isa}::")]
    if shared:
        raise SlimkitError(f"building slimkit's OpenVINO operators: the {isa} kernels define code the linker would "
                           f"share with the other instruction-set builds: {', '.join(shared[:5])}; keep such code "
                           f"inside namespace slimkit::{isa} (see Scratch in binary_kernel.hpp)")


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SlimkitError(f"building slimkit's OpenVINO operators failed:\n{' '.join(command)}\n{done.stderr[-4000:]}")


def require_library() -> Path:
    """The built library; a clear error naming the build command when the set-up has not built it."""
    path = library_path()
    if not path.exists():
        raise SlimkitError(f"slimkit's OpenVINO operators are not built for this installation ({path}); "
                           f"run `make test`/`make demo` (the set-up builds them) or `{sys.executable} -m "
                           "slimkit.runtime.engine.build`")
    return path


def _entry_points() -> Any:
    """The library's C functions (besides the operators OpenVINO loads), typed for ctypes."""
    import ctypes

    library = ctypes.CDLL(str(require_library()))
    library.slimkit_builds.restype = ctypes.c_char_p
    library.slimkit_kernel_choices.restype = ctypes.c_char_p
    library.slimkit_node_kernels.restype = ctypes.c_char_p
    library.slimkit_cpu_identity.restype = ctypes.c_char_p
    library.slimkit_int8_peak.restype = ctypes.c_double
    library.slimkit_int8_peak.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_double]
    return library


def runnable_builds() -> list[str]:
    """The kernel builds this CPU runs under $SLIMKIT_ISA, lowest first (generic, avx2, avx512): the ones the
    kernel tuner chooses among. An unknown $SLIMKIT_ISA is an error naming it."""
    builds = _entry_points().slimkit_builds().decode()
    if builds.startswith("error: "):
        raise SlimkitError(builds.removeprefix("error: "))
    return builds.split()


def kernel_choices() -> list[dict[str, Any]]:
    """Every kernel choice this process made or read from the cache: the operator, the call's signature (its
    shapes, batch and threads), the kernel that won and each timed kernel's microseconds."""
    rows = []
    for line in _entry_points().slimkit_kernel_choices().decode().splitlines():
        key, kernel, times = line.split("\t")
        operator, signature = key.split("|", 1)
        timed = dict(entry.split("=") for entry in times.split(",")) if times else {}
        rows.append({"operator": operator, "signature": signature, "kernel": kernel,
                     "us": {name: float(us) for name, us in timed.items()}})
    return rows


def node_kernels() -> dict[str, str]:
    """The kernel each operator node of this process's compiled models last ran, by the node's name."""
    lines = _entry_points().slimkit_node_kernels().decode().splitlines()
    return dict(line.split("\t") for line in lines)


def cpu_identity() -> str:
    """The CPU's identity as the kernel tuner's cache keys it (vendor, brand, family/model/stepping, the builds'
    features) and the library build: times measured under one identity are never used under another."""
    return _entry_points().slimkit_cpu_identity().decode()


def cache_dir() -> Path:
    """Where slimkit keeps what it measured on this machine, the folder the kernel tuner's cache file is in:
    $SLIMKIT_CACHE_DIR, else $XDG_CACHE_HOME/slimkit, else ~/.cache/slimkit."""
    if os.environ.get("SLIMKIT_CACHE_DIR"):
        return Path(os.environ["SLIMKIT_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "slimkit"
    return Path.home() / ".cache" / "slimkit"


INT8_KERNELS = ("generic", "avx2", "avx512/i16", "avx512/u8-ymm", "avx512/u8-zmm")  # QuantSparseConv2d's kernels


def int8_peak(kernel: str, threads: int, seconds: float = 0.5) -> float | None:
    """Multiplies per second of an int8 kernel's inner step (avx2: vpmaddwd + vpaddd; avx512/i16: vpdpwssd;
    avx512/u8-ymm and -zmm: vpdpbusd in 256- or 512-bit registers; generic: the portable loop) on `threads`
    threads from registers alone: the peak a layer's measured throughput is reported as a fraction of. None
    where this CPU does not run the kernel."""
    if kernel not in INT8_KERNELS:
        raise SlimkitError(f"{kernel!r} is not an int8 kernel; the int8 operator's kernels are "
                           f"{', '.join(INT8_KERNELS)}")
    peak = float(_entry_points().slimkit_int8_peak(kernel.encode(), threads, seconds))
    return None if peak < 0 else peak


if __name__ == "__main__":
    print(build())
