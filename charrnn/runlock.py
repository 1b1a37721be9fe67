"""The run-folder lock: one `charrnn train` at a time writes a run folder.

Two runs into one out_dir (two identical commands, or a `--resume` while the
first still trains) would write the same checkpoints and logs in turn: records
interleave and are lost, steps are trained twice. A run therefore holds an
exclusive lock on `out_dir/.lock` from before it touches the folder until it
returns. The lock is the operating system's (`flock` on POSIX, `msvcrt.locking`
on Windows), held through an open file descriptor, so a process that dies in any
way, `kill -9` included, releases it with its descriptors: no stale lock is ever
left to clean up. The file itself stays, and records who holds it (process id,
host, start time, command line) so that a refused run can say so.

Some file systems have no such lock (Lustre mounted without `-o flock`, some NFS
and CIFS mounts): there the run goes on unlocked, and says so.

Why not the `filelock` package: it would be a fifth runtime dependency for the
same single system call, and the holder's record, which it does not keep, is the
part a user needs.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import CharRNNError

LOCK_FILE = ".lock"
UNSUPPORTED = {errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}

try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

except ImportError:  # Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except PermissionError:  # held by another process
            return False
        return True


class RunLockedError(CharRNNError):
    """Another process holds the run folder."""


class RunLock:
    """An exclusive lock on a run folder, as a context manager.

        with RunLock(out_dir) as lock:   # RunLockedError if another process holds it
            ...                          # train; lock.unlocked says why there is no lock, if so

    Raises RunLockedError naming the folder and the holder (pid, host, since when)
    when another process holds it; OSError when the lock file cannot be opened
    (a read-only folder, say). The folder must exist. With remove_if_unused, a
    folder that holds nothing but the lock file when the run ends is removed,
    while the lock is still held (a run refused before its first write leaves no
    empty folder behind).
    """

    def __init__(self, folder: str | os.PathLike, remove_if_unused: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.remove_if_unused = remove_if_unused
        self.fd: int | None = None
        self.unlocked: str | None = None  # why the run goes on without a lock (the file system has none)

    def __enter__(self) -> RunLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncated before the lock is ours
            try:
                locked = _try_lock(fd)
            except OSError as e:
                if e.errno not in UNSUPPORTED:
                    os.close(fd)
                    raise
                self.unlocked = (f"{self.folder}'s file system cannot lock files ({e.strerror}): nothing stops a "
                                 f"second run from writing into it at the same time")  # fmt: skip
                break
            if not locked:
                holder = _describe(_read(fd))
                os.close(fd)
                raise RunLockedError(
                    f"{self.folder} is in use by another charrnn run ({holder}); wait for it to end, "
                    f"stop it, or train into another out_dir"
                )
            try:  # the holder before us may have removed the file (and its folder) as we opened it: then again
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
            self.folder.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                  "command": " ".join(sys.argv)}  # fmt: skip
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
        self.fd = fd
        return self

    def __exit__(self, *exc) -> bool:
        if self.fd is None:
            return False
        try:
            if self.remove_if_unused and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
                self.path.unlink()  # still locked: a run that opens the file now finds it gone and starts again
                self.folder.rmdir()
        except OSError:
            pass
        os.close(self.fd)  # releases the lock; the record stays, harmless, until the next run overwrites it
        self.fd = None
        return False


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        record = json.loads(os.read(fd, 4096).decode("utf-8"))
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}  # written a moment ago and not yet filled in, or damaged: the holder is unknown


def _describe(record: dict) -> str:
    if not record.get("pid"):
        return "process unknown"
    where = f" on {record['host']}" if record.get("host") and record["host"] != socket.gethostname() else ""
    since = f", since {record['since']}" if record.get("since") else ""
    command = f": {record['command']}" if record.get("command") else ""
    return f"pid {record['pid']}{where}{since}{command}"
