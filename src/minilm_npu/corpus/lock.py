"""One writer per output: an exclusive ``flock`` on a lock file inside the output, held for the whole job.

The operating system drops the lock when its holder dies (even by ``kill -9``), so a lock left by a killed run
never blocks the rerun; a second job on the same output while the first runs stops at once, and the lock file's
content (pid, host, start time, command) lets the error name the other process.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import OutputError

LOCK_NAME = "_lock"


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on {info.get('host')}, started {started}: {info.get('command', '?')}"


class OutputLock:
    """The exclusive lock on ``path`` (created if missing), held until ``__exit__``; or :class:`OutputError`.

    Args:
        path: The lock file, inside the directory it protects (which must exist).
        output: The output as the user named it, for the error message.
    """

    def __init__(self, path: Path, output: str | os.PathLike):
        self.path = Path(path)
        self.output = output
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        """Take the lock now (``with`` takes it on entry when not yet taken)."""
        import fcntl  # POSIX only; imported here so that importing the job module works everywhere

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise OutputError(f"{self.output} is being written by another `minilm-npu embed` "
                                  f"({_holder(self.path)}); wait for it to finish, or stop it and rerun") from None
            except BaseException:
                os.close(fd)
                raise
            # The lock is only ours if the file we locked is still the one at the path (a finishing .npy job
            # removes its work directory, lock file included, while holding the lock).
            try:
                current = os.stat(self.path)
                mine = os.fstat(fd)
                if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join(sys.argv)}
        try:  # who holds it, for the other process's error message
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode("utf-8") + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def __enter__(self) -> OutputLock:
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
            self._fd = None
