"""A job's output directory on object storage (``s3://bucket/prefix`` and whatever else ``pyarrow.fs`` opens).

The :class:`~minilm_npu.corpus.directory.Directory` interface, as :class:`~minilm_npu.corpus.localdir.LocalDirectory`
has it, with object-store semantics:

- **No rename.** :meth:`ObjectDirectory.write` uploads the finished bytes straight to the final key. The object
  appears (or replaces the previous one) only when the upload completes — S3 PUT and CompleteMultipartUpload are
  atomic — so a crash mid-write leaves the old object or none, never a torn one; a shard not yet listed in the
  manifest is ignored by readers and deleted by the next run. The manifest is replaced by one upload per commit.
- **No append.** The skipped-rows side file is kept in memory and uploaded whole by :meth:`ObjectAppendFile.sync`
  (only shards that hold bad rows pay for it).
- **No flock.** The job lock is a lease object (:class:`~minilm_npu.corpus.lock.Lease`); every write first calls
  :attr:`ObjectDirectory.guard`, which the lease sets, so a job that has lost its lease stops before it writes.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from ..errors import InputError
from .storage import BeforeCommit, HashingSink, RemotePath, WrittenFile, one_line


class ObjectDirectory:
    """A prefix on object storage, used as a directory.

    Args:
        uri: ``scheme://bucket/prefix``; credentials and endpoint come from the environment (see
            :mod:`.storage`).
        fs / path: An already opened ``pyarrow.fs`` filesystem and the prefix's path in it, instead of resolving
            ``uri`` (tests use pyarrow's in-memory mock filesystem); such a directory pickles as its ``uri``.
    """

    def __init__(self, uri: str, fs: Any = None, path: str | None = None):
        self.root = RemotePath(uri, fs, path)
        self.uri = self.root.uri
        self.guard: Callable[[], None] | None = None  # set by the lease: raises once the lease is lost

    def __str__(self) -> str:
        return self.uri

    def __reduce__(self):
        return (ObjectDirectory, (self.uri,))

    @property
    def fs(self) -> Any:
        return self.root.fs

    def _key(self, name: str) -> str:
        return f"{self.root.path}/{name}"

    def describe(self, name: str) -> str:
        """The user-facing URI of object ``name``."""
        return f"{self.uri}/{name}"

    def exists(self) -> bool:
        return self.root.exists()

    def is_dir(self) -> bool:
        # A prefix is a "directory" when nothing sits at its own key; an empty or new prefix is fine too.
        return not self.root.is_file()

    def make(self) -> None:
        """Check that the bucket exists (object stores need no directories; pyarrow's ``create_dir`` on S3 would
        try to create a missing bucket instead of reporting it)."""
        import pyarrow.fs as pafs

        bucket = self.root.path.split("/", 1)[0]
        if self.fs.type_name in ("s3", "gcs"):
            try:
                found = self.fs.get_file_info(bucket).type != pafs.FileType.NotFound
            except OSError as err:
                raise InputError(
                    f"{self.uri}: cannot reach bucket {bucket!r} ({one_line(err)}); check the "
                    "credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and AWS_ENDPOINT_URL"
                ) from err
            if not found:
                raise InputError(
                    f"{self.uri}: bucket {bucket!r} does not exist (or these credentials cannot "
                    "see it); create it first"
                )

    def names(self) -> list[str]:
        return [child.name for child in self.root.iterdir()]

    def has(self, name: str) -> bool:
        return self.root.child(name).exists()

    def size(self, name: str) -> int | None:
        import pyarrow.fs as pafs

        info = self.root.child(name).info()
        return None if info.type == pafs.FileType.NotFound else info.size

    def delete(self, name: str) -> None:
        try:
            self.fs.delete_file(self._key(name))
        except FileNotFoundError:
            pass

    def read_bytes(self, name: str) -> bytes | None:
        if self.size(name) is None:
            return None
        with self.fs.open_input_stream(self._key(name), compression=None) as stream:
            return stream.read()

    def source(self, name: str):
        """A random-access file over object ``name``, for ``pyarrow.parquet``."""
        return self.root.child(name).open_random()

    def sha256(self, name: str) -> str:
        import hashlib

        digest = hashlib.sha256()
        with self.fs.open_input_stream(self._key(name), compression=None) as stream:
            while block := stream.read(1 << 22):
                digest.update(block)
        return digest.hexdigest()

    def truncate(self, name: str, size: int) -> None:
        data = self.read_bytes(name)
        if data is not None and len(data) > size:
            self.write(name, lambda sink: sink.write(data[:size]))

    def remove(self) -> None:  # pragma: no cover - only .npy work directories are removed, and they are local
        raise InputError(f"{self.uri}: a .npy output must be a local path")

    def write(
        self,
        name: str,
        fill: Callable[[HashingSink], object],
        before_commit: BeforeCommit = None,
        tmp: str | None = None,
    ) -> WrittenFile:
        """Write ``name`` whole: it becomes visible, and replaces the previous object, when its upload completes.

        The bytes are first produced in memory (a shard is already in memory as a table; the copy is its encoded
        size), and only then uploaded in one go: pyarrow's output stream completes the upload when closed, even
        after an error, so streaming ``fill`` straight into it could publish a partial object, or replace a
        committed manifest with one. ``before_commit`` and the lease's :attr:`guard` run before the upload starts.
        ``tmp`` is accepted for the local interface and unused: there is no rename to stage for.
        """
        buffer = io.BytesIO()
        sink = HashingSink(buffer)
        fill(sink)
        if before_commit is not None:
            before_commit()
        if self.guard is not None:
            self.guard()
        with self.fs.open_output_stream(self._key(name), compression=None) as stream:
            stream.write(buffer.getbuffer())
        return WrittenFile(name, sink.size, sink.digest.hexdigest())

    def put(self, name: str, data: bytes) -> None:
        """Upload ``data`` as object ``name`` in one PUT without the lease's :attr:`guard`: the lease object itself,
        which is what the guard checks."""
        with self.fs.open_output_stream(self._key(name), compression=None) as stream:
            stream.write(data)

    def append_file(self, name: str) -> ObjectAppendFile:
        """The side file ``name`` for appending: what is there now, plus what is appended, uploaded on sync."""
        return ObjectAppendFile(self, name, self.read_bytes(name) or b"")


class ObjectAppendFile:
    """An "appendable" object: appends stay in memory and :meth:`sync` uploads the whole object (one PUT)."""

    def __init__(self, directory: ObjectDirectory, name: str, data: bytes):
        self._directory, self._name = directory, name
        self._data = bytearray(data)
        self._synced = len(data)

    def write(self, data: bytes) -> int:
        self._data += data
        return len(data)

    def flush(self) -> None:
        """Nothing to do: only :meth:`sync` uploads (a half-written line never reaches the store)."""

    def tell(self) -> int:
        return len(self._data)

    def sync(self) -> None:
        if len(self._data) != self._synced:
            data = bytes(self._data)
            self._directory.write(self._name, lambda sink: sink.write(data))
            self._synced = len(data)

    def close(self) -> None:
        """Drop what was never synced: the manifest's ``skipped_bytes`` only counts synced lines."""

    def __enter__(self) -> ObjectAppendFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
