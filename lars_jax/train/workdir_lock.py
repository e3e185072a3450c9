"""One run per workdir: an exclusive lock on ``<workdir>/.lock``.

The lock is `fcntl.flock` on an open file, so the kernel releases it when the process
ends in any way (exit, exception, SIGKILL, crash): a lock left by a dead process never
blocks a new run, and there is no stale lock to detect or clean up. The file holds the
holder's pid and host, named in the message a second run gets. The file itself stays
(deleting it could let two runs lock two different files).

References:
  flock(2), Linux man-pages.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType

from lars_jax.runs.errors import WorkdirLockedError

LOCK_FILE = ".lock"




class WorkdirLock:
    """An exclusive, non-blocking lock on a workdir (a context manager).

    Args:
      workdir: the run folder (created if missing).

    Raises (on enter):
      WorkdirLockedError: another process holds it; the message names its pid and host.
    """

    def __init__(self, workdir: str | os.PathLike[str]) -> None:
        self.path = Path(workdir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirLockedError(
                f"workdir {self.path.parent} is in use by another run ({holder}); wait for "
                "it to end or use another --workdir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
