"""Every file slimkit writes goes through `atomic_write`: a temporary file in the same folder, flushed and
fsynced, then renamed over the target, so a killed run never leaves a torn recipe, metrics file, report,
plot, plan or checkpoint, only the previous complete one. A full disk or another I/O error is a
SlimkitError (exit 2) naming the path and the cause, and the previous file stays in place."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from slimkit.errors import SlimkitError, first_line

TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """Where `path` is written before the rename: hidden, per process, beside it."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Call `write` on a temporary file beside `path`, fsync it, rename it over `path`, fsync the folder."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise SlimkitError(f"cannot write {path}: {exc.strerror or exc}; the previous version of the file, if "
                           f"any, is unchanged") from None
    except RuntimeError as exc:  # torch.save reports a failed write (a full disk) as a RuntimeError
        raise SlimkitError(f"cannot write {path}: {_reason(exc)}; the previous version of the file, "
                           f"if any, is unchanged") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _reason(exc: RuntimeError) -> str:
    """Why a write failed. torch.save's zip writer reports a failed write as 'unexpected pos 704 vs 598', and
    the OSError that says why (No space left on device) is only the context of that RuntimeError: report it."""
    cause: BaseException | None = exc
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return first_line(exc)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files a killed run left in `folder` (and its sub-folders); returns them."""
    stale = [p for p in Path(folder).rglob(f".*{TEMP_SUFFIX}") if p.is_file()] if Path(folder).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
