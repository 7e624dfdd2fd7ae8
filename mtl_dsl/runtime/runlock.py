"""A run folder is owned by one run at a time.

``RunLock`` is the interface: ``acquire()`` takes the folder or raises ``UsageError`` naming the
run that holds it; ``release()`` gives it back; as a context manager, it is released on any exit.
``FileLock`` implements it for a local (or POSIX-locking network) folder with an OS file lock
(``fcntl.flock``) on ``RUN/.lock``, in which the holder writes its PID, host and start time. The
operating system drops the lock when the holding process ends, however it ends (``kill -9``
included), so a lock file left behind by a dead process is taken over, and the new run says so.

A remote run folder (object storage) has no OS locks; ``lease.Lease`` implements the same
interface there: ``acquire()`` creates ``RUN/.lock`` only if absent (a conditional write), a
background renewal extends it while the run lives, ``release()`` deletes it, and a lease past its
expiry (or of a dead process on this host) counts as stale and is taken over as here.
``lease.lock_for`` picks the one a run folder needs.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

from ..errors import usage_error

LOCK_FILE = ".lock"


class RunLock(ABC):
    """Exclusive ownership of a run folder."""

    #: the previous holder's record when a stale lock was taken over (else None)
    took_over: Optional[dict] = None
    #: set (to a sentence naming the other run) when another run took the folder over mid-run
    lost: Optional[str] = None

    @abstractmethod
    def acquire(self) -> None:
        """Take the folder, or raise ``UsageError`` naming the holder."""

    @abstractmethod
    def release(self) -> None:
        """Give the folder back (idempotent)."""

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class FileLock(RunLock):
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def _read(self, fd: int) -> dict:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            text = os.read(fd, 4096).decode("utf-8", "replace")
            record = json.loads(text) if text.strip() else {}
            return record if isinstance(record, dict) else {}
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        import fcntl

        if self._fd is not None:
            return
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # read-only storage, a file in the way, no permission, a full disk
            raise self._unusable(exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise usage_error(str(self.run_dir), f"run folder {self.run_dir} is in use by another "
                                                 f"run ({describe(holder)}); wait for it to end or "
                                                 f"choose another --run-name") from None
        previous = self._read(fd)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            self.took_over = previous
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(record).encode("utf-8"))
        except OSError as exc:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise self._unusable(exc) from None
        self._fd = fd

    def _unusable(self, exc: OSError):
        """The run folder cannot be written: a full disk stops the run (exit 1) as a full disk
        elsewhere does; anything else is a folder the user gave that cannot hold a run (exit 2)."""
        from .failures import write_error

        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return write_error(self.path, exc)
        return usage_error(str(self.run_dir), f"run folder {self.run_dir} cannot be written "
                                              f"({exc.strerror or exc}: {exc.filename or self.path}); "
                                              f"choose another --storage")

    def release(self) -> None:
        import fcntl

        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def describe(record: dict) -> str:
    if not record.get("pid"):
        return "PID unknown"
    host = f" on {record['host']}" if record.get("host") else ""
    since = f", since {record['started']}" if record.get("started") else ""
    return f"PID {record['pid']}{host}{since}"


def pid_alive(pid: int) -> bool:
    """Whether a process of this id runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
