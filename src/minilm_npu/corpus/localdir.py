"""A job's output directory on the local disk: files appear whole, by rename, and survive a power cut.

A file is written to a temporary name in the same directory, ``fsync``-ed, renamed over its final name with
``os.replace`` and the directory ``fsync``-ed, so a reader (or a resumed job) sees the old file or the complete
new one, never a torn write. One of the two kinds of :class:`~minilm_npu.corpus.directory.Directory`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from .storage import TMP_SUFFIX, BeforeCommit, HashingSink, WrittenFile, fsync_dir


class LocalDirectory:
    """A local directory. It is ``os.PathLike`` and ``/ name`` gives a :class:`~pathlib.Path`, so code that only
    ever runs on local output (``.npy`` assembly) keeps using plain file operations.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.uri = str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __str__(self) -> str:
        return self.uri

    def __reduce__(self):
        return (LocalDirectory, (self.path,))

    def describe(self, name: str) -> str:
        """The user-facing name of file ``name`` in this directory."""
        return str(self.path / name)

    def exists(self) -> bool:
        return self.path.exists()

    def is_dir(self) -> bool:
        return self.path.is_dir()

    def make(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def names(self) -> list[str]:
        return [p.name for p in self.path.iterdir()]

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def size(self, name: str) -> int | None:
        try:
            return (self.path / name).stat().st_size
        except FileNotFoundError:
            return None

    def delete(self, name: str) -> None:
        (self.path / name).unlink(missing_ok=True)

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None

    def source(self, name: str) -> str:
        """What ``pyarrow.parquet`` opens for file ``name`` (a path: pyarrow reads local files natively)."""
        return str(self.path / name)

    def sha256(self, name: str) -> str:
        from ..modelfiles import sha256_of  # the one chunked file hash (it also checks the model's weights)

        return sha256_of(self.path / name)

    def truncate(self, name: str, size: int) -> None:
        path = self.path / name
        if path.exists():
            with open(path, "rb+") as handle:
                handle.truncate(size)

    def remove(self) -> None:
        """Delete the whole directory (a finished ``.npy`` job's work directory)."""
        shutil.rmtree(self.path)

    def write(
        self,
        name: str,
        fill: Callable[[HashingSink], object],
        before_commit: BeforeCommit = None,
        tmp: str | None = None,
    ) -> WrittenFile:
        """Write ``name`` through a temporary file (``tmp``, default ``<name>.tmp``): fsync, rename, fsync the
        directory. On any failure the temporary file is removed (frees the space)."""
        final = self.path / name
        temp = self.path / (tmp or name + TMP_SUFFIX)
        try:
            with open(temp, "wb") as handle:
                sink = HashingSink(handle)
                fill(sink)
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        if before_commit is not None:
            before_commit()
        os.replace(temp, final)
        fsync_dir(self.path)
        return WrittenFile(name, sink.size, sink.digest.hexdigest())

    def append_file(self, name: str) -> LocalAppendFile:
        """The side file ``name`` opened for appending (the skipped-rows list)."""
        return LocalAppendFile(open(self.path / name, "ab"))  # noqa: SIM115 - closed by the caller


class LocalAppendFile:
    """An append-only local file whose :meth:`sync` makes the appended bytes durable (``fsync``)."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data: bytes) -> int:
        return self._handle.write(data)

    def flush(self) -> None:
        self._handle.flush()

    def tell(self) -> int:
        return self._handle.tell()

    def sync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> LocalAppendFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
