"""What a corpus job asks of the directory it writes: the :class:`Directory` protocol and :func:`open_directory`.

Two kinds implement it, each in its own module beside this one:

- :class:`~minilm_npu.corpus.localdir.LocalDirectory`, a local path: temporary file, ``fsync``, ``os.replace``,
  directory ``fsync``; its lock is an ``flock``.
- :class:`~minilm_npu.corpus.objectstore.ObjectDirectory`, a prefix on object storage (``s3://bucket/prefix``):
  whole-object uploads under the final name, no rename; its lock is a lease object.

Either way a written file is absent or whole, and the job's manifest (replaced by one atomic write per commit) is
the only thing readers trust: a shard it does not list is ignored, and deleted on resume. Writer, manifest,
layout, repair and search take a path, a URI or an opened directory, and open it here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol

from .localdir import LocalDirectory
from .objectstore import ObjectDirectory
from .storage import BeforeCommit, HashingSink, WrittenFile, is_uri, local_path


class AppendFile(Protocol):
    """A side file that grows by appends (the skipped-rows list); only :meth:`sync` makes appends durable."""

    def write(self, data: bytes) -> int: ...

    def flush(self) -> None: ...

    def tell(self) -> int:
        """Bytes in the file, appended ones included."""

    def sync(self) -> None:
        """Make every byte appended so far durable (``fsync`` locally, one upload on object storage)."""

    def close(self) -> None: ...

    def __enter__(self) -> AppendFile: ...

    def __exit__(self, *exc: object) -> None: ...


class Directory(Protocol):
    """A job's directory: names in it, files written whole (with their size and checksum), an append-only side file.

    Attributes:
        uri: The directory as the user named it (a path or a URI), for messages.
    """

    uri: str

    def describe(self, name: str) -> str:
        """The user-facing name (path or URI) of file ``name`` in this directory."""

    def exists(self) -> bool: ...

    def is_dir(self) -> bool:
        """False when something that is not a directory sits at this path or key."""

    def make(self) -> None:
        """Create the directory (locally), or check that the bucket exists (object storage)."""

    def names(self) -> list[str]: ...

    def has(self, name: str) -> bool: ...

    def size(self, name: str) -> int | None:
        """The size of file ``name`` in bytes, None when it does not exist."""

    def delete(self, name: str) -> None:
        """Delete file ``name`` if it exists."""

    def read_bytes(self, name: str) -> bytes | None:
        """The content of file ``name``, None when it does not exist."""

    def source(self, name: str) -> Any:
        """What ``pyarrow.parquet`` opens for file ``name``."""

    def sha256(self, name: str) -> str:
        """The hex SHA-256 of file ``name``, read back."""

    def truncate(self, name: str, size: int) -> None:
        """Cut file ``name`` to ``size`` bytes (nothing when it is missing or already shorter)."""

    def remove(self) -> None:
        """Delete the whole directory (a finished ``.npy`` job's local work directory)."""

    def write(
        self,
        name: str,
        fill: Callable[[HashingSink], object],
        before_commit: BeforeCommit = None,
        tmp: str | None = None,
    ) -> WrittenFile:
        """Write ``name`` whole through ``fill``: it becomes visible, replacing the old file, only once complete.

        Args:
            name: The file's final name.
            fill: Writes the bytes into the sink, which counts and hashes them.
            before_commit: Called after the bytes are written and before they become visible (kill tests stop
                there).
            tmp: The local temporary file's name (default ``<name>.tmp``); unused on object storage.
        """

    def append_file(self, name: str) -> AppendFile:
        """The side file ``name``, opened for appending."""


#: What a job's directory may be given as: a local path, a storage URI, or an already opened directory.
DirectorySpec = str | os.PathLike[str] | Directory


def open_directory(spec: DirectorySpec) -> Directory:
    """The directory for an output path or URI: a :class:`LocalDirectory`, an :class:`ObjectDirectory` for a URI,
    or ``spec`` itself when it is already an opened directory."""
    if isinstance(spec, (LocalDirectory, ObjectDirectory)):
        return spec
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"not a path, a URI or an opened directory: {spec!r}")
    if is_uri(spec):
        return ObjectDirectory(str(spec))
    return LocalDirectory(local_path(spec))
