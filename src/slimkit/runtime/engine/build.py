"""Builds and finds slimkit's OpenVINO operator library (the C++ in engine/cpp), compiled by g++ against the
headers and libraries the `openvino` wheel ships.

The set-up script builds it (`python -m slimkit.runtime.engine.build`); nothing is compiled on import. The kernels
(cpp/kernels) are compiled once per instruction set (AVX-512 with VL, VPOPCNTDQ and VNNI; AVX2; portable), the
operators (one file each), the dispatch between those builds and the extension's entry point (cpp/*.cpp) once;
every operator times the kernels the CPU runs on its first call of a shape and keeps the fastest (cpp/kernel_tuner.hpp),
so one build serves every x86-64 machine and no build is chosen because a CPU flag exists. Every
warning fails the build (-Wall -Wextra -Werror; OpenVINO's headers are system headers, whose warnings are
not ours). The file name carries a digest of every source, the flags, the compiler and the OpenVINO version,
so a changed source, flag or engine never loads a stale build. Beside it, `<library>.sha256` records the
built file's own SHA-256 (in `sha256sum` format): the library is loaded (by OpenVINO or ctypes) only once its
bytes match, since dlopen of a truncated library dies with SIGBUS and of an altered one runs its code.

The library lives in one of two places. A wheel carries it (setup.py calls `package_into` when the wheel is
built: the same compile, into the package's lib/ folder, beside operators.json naming the OpenVINO release it
was built against, or saying why this platform could not build it); a checkout builds it into the virtual
environment (`build`, run by the set-up). `require_library` takes the wheel's first, so an installed slimkit
needs no compiler, and refuses it by name under another OpenVINO release.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from slimkit.errors import SlimkitError
from slimkit.files import atomic_write_text

SOURCES = Path(__file__).with_name("cpp")  # the operators, the dispatch and the entry point: compiled once
KERNELS = SOURCES / "kernels"  # kernels_<isa>.cpp and the kernel headers they include: compiled once per ISA
FLAGS = ["-O3", "-std=c++17", "-fPIC", "-ffp-contract=off",  # no FMA contraction: outputs stay bit-exact
         "-Wall", "-Wextra", "-Werror"]
OPENVINO_DEFINES = ["-DOV_THREAD=OV_THREAD_TBB_ADAPTIVE", "-D_GLIBCXX_USE_CXX11_ABI=1"]  # as the wheel's CMake sets
OPENVINO_INCLUDE = "-isystem"  # OpenVINO's headers as system headers: -Werror applies to slimkit's code alone
ISA_FLAGS = {"avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vpopcntdq", "-mavx512vnni", "-mfma"],
             "avx2": ["-mavx2", "-mpopcnt", "-mfma"], "generic": []}
PACKAGED = Path(__file__).with_name("lib")  # where a wheel carries the library (built by setup.py)
PACKAGED_RECORD = "operators.json"  # in PACKAGED: {"library": file name, "openvino": release} or {"unavailable": why}
# the wheel's library finds OpenVINO's libraries in the openvino package installed beside slimkit's
PACKAGED_RPATH = "$ORIGIN/" + "../" * len(PACKAGED.relative_to(Path(__file__).parents[3]).parts) + "openvino/libs"
LIBRARY_GLOB = "libslimkit_openvino-*.so"


def _openvino_dir() -> Path:
    try:
        import openvino
    except ImportError:
        raise SlimkitError("slimkit's engine operators need OpenVINO: pip install 'slimkit[engines]'") from None
    return Path(openvino.__file__).parent


def openvino_release() -> str:
    """The installed OpenVINO's release ('2026.4.1'), the version a wheel's library must be loaded with."""
    _openvino_dir()  # where OpenVINO is missing: the error that says how to install it
    import openvino

    return str(openvino.__version__).split("-")[0]


def _compiler() -> str:
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise SlimkitError("building slimkit's OpenVINO operators needs a C++17 compiler (g++ or $CXX) on PATH")
    return compiler


def unbuildable_reason() -> str | None:
    """Why this machine cannot build the operators (None where it can): they are x86-64 Linux code, compiled by
    a C++ compiler against the openvino wheel. Asked before any compiling, so no build fails half-way for it."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return (f"slimkit's operators are x86-64 Linux code (AVX-512, AVX2 and portable kernels), and this is "
                f"{sys.platform} on {platform.machine()}")
    try:
        _openvino_dir()
        _compiler()
    except SlimkitError as exc:
        return str(exc)
    return None


def _runtime_library(openvino_dir: Path, stem: str) -> Path:
    found = sorted((openvino_dir / "libs").glob(f"{stem}.so.*"))
    if not found:
        raise SlimkitError(f"the openvino wheel at {openvino_dir} has no libs/{stem}.so.*; reinstall openvino")
    return found[0]


def library_name() -> str:
    """The library's file name for these sources, this compiler and this OpenVINO: the digest rule."""
    import openvino

    digest = hashlib.sha256()
    for source in sorted(SOURCES.rglob("*.[ch]pp")):
        digest.update(source.relative_to(SOURCES).as_posix().encode() + source.read_bytes())
    version = subprocess.run([_compiler(), "--version"], capture_output=True, text=True, check=True).stdout
    settings = repr((FLAGS, OPENVINO_DEFINES, OPENVINO_INCLUDE, ISA_FLAGS))
    digest.update(version.encode() + openvino.__version__.encode() + settings.encode())
    return f"libslimkit_openvino-{digest.hexdigest()[:16]}.so"


def library_path() -> Path:
    """Where the development build for these sources, this compiler and this OpenVINO lives (built or not)."""
    return Path(sys.prefix) / "lib" / "slimkit" / library_name()


def digest_path(library: Path) -> Path:
    """Where the SHA-256 of `library`, recorded when it was built, lives: beside it, as `sha256sum` writes it."""
    return library.with_name(library.name + ".sha256")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(library: Path) -> bool:
    """Whether `library` exists and its bytes have the SHA-256 recorded when it was built (reading a file never
    maps it, so a truncated one is found here, before dlopen)."""
    try:
        recorded = digest_path(library).read_text().split()
        return len(recorded) == 2 and recorded[1] == library.name and _sha256(library) == recorded[0]
    except OSError:
        return False


def build(force: bool = False) -> Path:
    """The development build (library_path), compiled unless this exact build exists intact (a truncated or
    changed one is built again); the build of other sources, flags or engines it replaces is removed."""
    target = library_path()
    if _intact(target) and not force:
        return target
    reason = unbuildable_reason()
    if reason is not None:
        raise SlimkitError(reason)
    return compile_library(target.parent, rpath=str(_openvino_dir() / "libs"))


def package_into(folder: Path) -> str | None:
    """What a wheel carries in `folder` (its lib/): the library, found through PACKAGED_RPATH, and operators.json
    naming it and the OpenVINO release it was built against; or, where this machine cannot build it, only
    operators.json saying why (a pure-Python wheel, whose engine export says so). Returns that reason."""
    reason = unbuildable_reason()
    if reason is None:
        record: dict[str, str] = {"library": compile_library(folder, rpath=PACKAGED_RPATH).name,
                                  "openvino": openvino_release()}
    else:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_builds_but(folder, None)
        record = {"unavailable": reason}
    atomic_write_text(folder / PACKAGED_RECORD, json.dumps(record, indent=2))
    return reason


def compile_library(folder: Path, rpath: str) -> Path:
    """Compile the library into `folder` (the build of other sources there is removed) with `rpath` as where it
    finds OpenVINO's libraries; the file appears atomically (built in a temporary folder, then renamed), so a
    killed build never leaves a half-written library behind."""
    ov_dir = _openvino_dir()
    compiler = _compiler()
    target = folder / library_name()
    folder.mkdir(parents=True, exist_ok=True)
    build_id = f"-DSLIMKIT_BUILD_ID=\"{target.stem}\""  # the kernel tuner's cache belongs to this build alone
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
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
              f"-Wl,-rpath,{rpath}"])
        atomic_write_text(digest_path(target), f"{_sha256(built)}  {target.name}\n")  # before the library: a kill
        os.replace(built, target)  # between the two leaves no library to load, and the next build makes it
    _remove_builds_but(folder, target)
    return target


def _remove_builds_but(folder: Path, keep: Path | None) -> None:
    """Remove every library build in `folder` and its recorded digest, but `keep`'s."""
    kept = () if keep is None else (keep, digest_path(keep))
    for stale in folder.glob(LIBRARY_GLOB + "*"):
        if stale not in kept:
            stale.unlink(missing_ok=True)


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
    """The operator library: the one the installed wheel carries (PACKAGED), else the development build, once
    its bytes match the digest recorded when it was built; a clear error where there is none, where the wheel's
    was built against another OpenVINO release, or where the file was truncated or changed since (never handed
    to dlopen)."""
    if (PACKAGED / PACKAGED_RECORD).exists():
        return _packaged_library()
    path = library_path()
    rebuild = (f"run `make test`/`make demo` (the set-up builds them) or `{sys.executable} -m "
               "slimkit.runtime.engine.build`")
    if not path.exists():
        raise SlimkitError(f"slimkit's OpenVINO operators are not built for this installation ({path}); {rebuild}")
    if not _intact(path):
        raise SlimkitError(f"slimkit's OpenVINO operator library {path} does not match the SHA-256 recorded when it "
                           f"was built ({digest_path(path).name}): it was truncated or changed since, so it is not "
                           f"loaded; {rebuild}")
    return path


def _packaged_library() -> Path:
    record_path = PACKAGED / PACKAGED_RECORD
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as exc:
        raise SlimkitError(f"{record_path}: unreadable ({exc}); reinstall slimkit") from None
    if not isinstance(record, dict):
        raise SlimkitError(f"{record_path}: not a record of slimkit's operator library; reinstall slimkit")
    if "unavailable" in record:
        raise SlimkitError(f"engine export is unavailable: this slimkit was installed without its OpenVINO "
                           f"operators, because {record['unavailable']}. Install slimkit's Linux x86-64 wheel, or "
                           f"install slimkit from source where that reason does not hold")
    built_against, library = record.get("openvino"), record.get("library")
    if not isinstance(built_against, str) or not isinstance(library, str) or not (PACKAGED / library).is_file():
        raise SlimkitError(f"{record_path}: names no library file of {PACKAGED}; reinstall slimkit")
    installed = openvino_release()
    if installed != built_against:
        raise SlimkitError(f"slimkit's OpenVINO operators were built against OpenVINO {built_against}, and OpenVINO "
                           f"{installed} is installed: pip install 'openvino=={built_against}' (slimkit[engines] pins "
                           f"it), or install slimkit from source to build them against OpenVINO {installed}")
    if not _intact(PACKAGED / library):
        raise SlimkitError(f"slimkit's OpenVINO operator library {PACKAGED / library} does not match the SHA-256 "
                           f"recorded when the wheel was built: it was truncated or changed since, so it is not "
                           f"loaded; reinstall slimkit")
    return PACKAGED / library


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
