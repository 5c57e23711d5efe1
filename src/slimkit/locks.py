"""One writer per folder. A run folder (`slimkit run --out`) or an export folder is claimed with a lock file,
`.slimkit.lock`, naming its owner (pid, host, the process's start time, the command); two runs into one
folder otherwise both exit 0 and leave one run's recipe beside the other's model and metrics.

The lock file is created atomically (O_CREAT | O_EXCL), so of two writers exactly one creates it. The owner
also holds an flock on it while it lives, which the kernel drops when the process dies however it dies, so
a lock whose flock can be taken belongs to a dead process: it is taken over, and the caller reports it.
On the same host the owner's pid and start time are checked too (a file system without flock then still
refuses a live owner). A lock written on another host is never taken over: its owner cannot be checked
from here, so the error says which file to delete once that process is known to be gone.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from slimkit.errors import SlimkitError

LOCK_NAME = ".slimkit.lock"


@dataclass(frozen=True)
class Owner:
    """The process a lock file names."""

    pid: int
    host: str
    started: float  # the process's start, seconds since the epoch
    command: str
    purpose: str  # what it writes: "run", "export"

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"the {self.purpose} of process {self.pid} on {self.host} (started {when}: {self.command})"


def _process_start(pid: int) -> float | None:
    """When process `pid` started, in seconds since the epoch (Linux /proc); None where that cannot be read."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _this_process(purpose: str) -> Owner:
    started = _process_start(os.getpid())
    return Owner(os.getpid(), socket.gethostname(), started if started is not None else time.time(),
                 " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python",
                 purpose)


def _read_owner(fd: int) -> Owner | None:
    """The owner a lock file names; None for a file that is empty or torn (its writer died writing it)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        data: Any = json.loads(os.read(fd, 65536).decode())
        return Owner(int(data["pid"]), str(data["host"]), float(data["started"]), str(data["command"]),
                     str(data["purpose"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def process_alive(pid: int) -> bool:
    """Whether a process `pid` runs on this host (another user's process counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _alive_here(owner: Owner) -> bool:
    """Whether `owner`, a process of this host, still runs: its pid exists and started when the lock says
    (a pid the system gave to a new process since is not the owner)."""
    if not process_alive(owner.pid):
        return False
    started = _process_start(owner.pid)
    return started is None or abs(started - owner.started) < 2.0


def remove_stale_work(parent: Path, prefix: str) -> None:
    """Remove the folders `parent`/<prefix><pid> whose process no longer runs (a killed writer's); a live
    process's, and names that do not end in a pid, stay."""
    for stale in parent.glob(f"{prefix}*"):
        pid = stale.name.removeprefix(prefix)
        if stale.is_dir() and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


class FolderLock:
    """`with FolderLock(folder, "run"):` claims `folder` (creating it) for this process, and releases it on
    exit. A live owner is a SlimkitError (exit 2) naming it; a dead owner's lock is taken over and named in
    `took_over`, for the caller to report."""

    def __init__(self, folder: str | os.PathLike[str], purpose: str):
        self.folder, self.purpose = Path(folder), purpose
        self.path = self.folder / LOCK_NAME
        self.took_over: Owner | None = None
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = _this_process(self.purpose)
        for _ in range(10):  # each round ends with the lock, an error, or a lock file that changed under us
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
            except FileExistsError:
                existing = self._open_existing()
                if existing is None:
                    continue  # released between our two calls: try to create it again
                fd = existing
            if self._claim(fd, me):
                return self
        raise SlimkitError(f"cannot claim {self.folder}: its lock file {self.path} keeps changing; another "
                           f"process is starting in this folder")

    @property
    def take_over_note(self) -> str | None:
        """The line to show when this claim took over a dead owner's lock."""
        if self.took_over is None:
            return None
        return f"{self.folder}: took over the lock of {self.took_over.describe()}, which no longer runs"

    def _open_existing(self) -> int | None:
        try:
            return os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return None

    def _claim(self, fd: int, me: Owner) -> bool:
        """Take the lock held by `fd` when its owner is gone (or it is ours, just created); False when the
        file was replaced meanwhile (the caller tries again)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(fd)
            os.close(fd)
            raise SlimkitError(self._in_use(owner)) from None
        except OSError:  # a file system without flock: the owner's pid and start time decide alone
            pass
        try:
            same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same_file = False
        if not same_file:  # its owner released it (unlinked) between our open and our flock
            os.close(fd)
            return False
        previous = _read_owner(fd)
        if previous is not None and previous != me:
            if previous.host != me.host or _alive_here(previous):
                os.close(fd)
                raise SlimkitError(self._in_use(previous))
            self.took_over = previous
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(asdict(me)).encode())
        os.fsync(fd)
        self._fd = fd
        return True

    def _in_use(self, owner: Owner | None) -> str:
        who = owner.describe() if owner is not None else "another process (it is still writing its lock file)"
        return (f"{self.folder} is in use by {who}; wait for it to finish, or choose another folder (if that "
                f"process no longer runs, delete {self.path})")

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)  # before the flock goes, so no one takes over a lock being removed
            os.close(self._fd)
            self._fd = None
