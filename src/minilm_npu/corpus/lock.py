"""One writer per output: an exclusive ``flock`` on a lock file inside a local output, a lease on object storage.

Local: the operating system drops the lock when its holder dies (even by ``kill -9``), so a lock left by a killed
run never blocks the rerun; a second job on the same output while the first runs stops at once, and the lock
file's content (pid, host, start time, command) lets the error name the other process.

Object storage cannot ``flock``: see :class:`Lease` for what stands in for it, and its limits.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from ..errors import OutputError
from .directory import Directory
from .localdir import LocalDirectory
from .objectstore import ObjectDirectory

LOCK_NAME = "_lock"
#: How long a lease on object storage lasts without renewal; renewed every third of it while the job runs.
LEASE_SECONDS = float(os.environ.get("MINILM_NPU_LEASE_SECONDS", "60"))


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
                raise OutputError(
                    f"{self.output} is being written by another `minilm-npu embed` "
                    f"({_holder(self.path)}); wait for it to finish, or stop it and rerun"
                ) from None
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
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": " ".join(sys.argv)}
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


def acquire_lock(directory: Directory, output: str | os.PathLike) -> OutputLock | Lease:
    """The job's lock on ``directory`` (see :mod:`.directory`): ``flock`` when local, a lease on object storage."""
    if isinstance(directory, LocalDirectory):
        return OutputLock(directory / LOCK_NAME, output).acquire()
    if isinstance(directory, ObjectDirectory):
        return Lease(directory, output).acquire()
    raise TypeError(f"no lock for a directory of type {type(directory).__name__}")


class Lease:
    """A lease object (``_lock``) on object storage: owner id, host, pid, expiry; renewed while the job runs.

    A second job finds a live lease and stops, naming the holder. A lease past its expiry is taken over (its
    holder died without releasing it), as is one whose holder ran on this host under a pid that no longer exists
    (a killed run, rerun at once, need not wait for the expiry). The holder renews the lease every third of
    ``ttl`` from a daemon thread; every write to the directory first checks that this process still holds an
    unexpired lease (:attr:`ObjectDirectory.guard <minilm_npu.corpus.objectstore.ObjectDirectory.guard>`), so a job
    that stalled past its expiry stops instead of writing beside a newer holder.

    Limits, honestly: a plain S3 PUT has no compare-and-swap, and pyarrow exposes no conditional write
    (``If-None-Match``/``If-Match``), so two jobs that start within the same instant can both believe they took
    the lease. Taking it writes the lease, waits ``settle`` seconds and reads it back (S3 reads are strongly
    consistent), which narrows that window to jobs started less than ``settle`` apart but cannot close it. The
    lease protects against the usual mistake (a second run while the first still works), not against a race
    between two schedulers; run one driver per output.

    Args:
        directory: An :class:`~minilm_npu.corpus.objectstore.ObjectDirectory`.
        output: The output as the user named it, for messages.
        ttl: Seconds a lease lives without renewal.
        settle: Seconds between writing the lease and reading it back.
    """

    def __init__(
        self, directory: ObjectDirectory, output: str | os.PathLike, ttl: float | None = None, settle: float = 0.2
    ):
        self.directory, self.output = directory, output
        self.ttl = LEASE_SECONDS if ttl is None else ttl
        self.settle = settle
        self.owner = uuid.uuid4().hex
        self._started = time.time()
        self._valid_until = 0.0  # monotonic time until which the last written lease is surely ours
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    def _read(self) -> dict:
        try:
            data = self.directory.read_bytes(LOCK_NAME)
            info = json.loads(data or b"{}")
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def _write(self) -> None:
        now, monotonic = time.time(), time.monotonic()
        info = {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self._started,
            "expires": now + self.ttl,
            "command": " ".join(sys.argv),
        }
        self.directory.put(LOCK_NAME, json.dumps(info).encode("utf-8") + b"\n")
        self._valid_until = monotonic + self.ttl

    def _live_holder(self, info: dict) -> str | None:
        """A description of another live holder of ``info``'s lease, or None when it may be taken."""
        if not info or info.get("owner") == self.owner:
            return None
        left = float(info.get("expires", 0)) - time.time()
        if left <= 0:
            return None
        if info.get("host") == socket.gethostname() and not _pid_alive(info.get("pid")):
            return None  # its holder was on this machine and is gone (killed), no need to wait for the expiry
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
        return (
            f"pid {info.get('pid')} on {info.get('host')}, started {started}: {info.get('command', '?')}; "
            f"its lease expires in {left:.0f} s unless renewed"
        )

    def acquire(self) -> Lease:
        """Take the lease, or raise :class:`OutputError` naming its live holder."""
        for _ in range(2):  # the read-back after writing catches a job that wrote its lease at the same time
            holder = self._live_holder(self._read())
            if holder:
                raise OutputError(
                    f"{self.output} is being written by another `minilm-npu embed` ({holder}); "
                    "wait for it to finish, or stop it and rerun"
                )
            self._write()
            time.sleep(self.settle)
            if self._read().get("owner") == self.owner:
                break
        else:
            raise OutputError(f"{self.output}: another job keeps taking the lease; run one job per output")
        self.directory.guard = self.check
        self._thread = threading.Thread(target=self._renew, name="minilm-lease", daemon=True)
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise :class:`OutputError` when this process may no longer hold the lease (called before each write)."""
        if self.lost is None and time.monotonic() >= self._valid_until:
            self.lost = "its lease expired before it could be renewed"
        if self.lost is not None:
            raise OutputError(
                f"{self.output}: this job lost its lease ({self.lost}); another job may be writing "
                "it. Rerun the same command once that job is done"
            )

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                info = self._read()
                if info and info.get("owner") != self.owner:
                    self.lost = f"pid {info.get('pid')} on {info.get('host')} took it over"
                    return
                self._write()
            except OSError:  # a blip: the next renewal retries, and check() stops writes once it expires
                continue

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.directory.guard = None
        try:
            if self._read().get("owner") == self.owner:
                self.directory.delete(LOCK_NAME)
        except OSError:
            pass  # it expires by itself

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # unknown: only the expiry can tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
