"""What a corpus job's files are made of, wherever they live: URIs, inputs on object storage, hashed writes.

A local path (or a ``file://`` URI) stays a plain :class:`~pathlib.Path`. Any other URI that
``pyarrow.fs.FileSystem.from_uri`` understands (``s3://bucket/prefix``, ``gs://…``, ``hdfs://…``) is opened through
:func:`resolve`: an input there is a :class:`RemotePath`, an output a
:class:`~minilm_npu.corpus.objectstore.ObjectDirectory` (:mod:`.directory` says what a job's directory offers).
Credentials and the endpoint come from the standard AWS variables, read by the AWS SDK inside pyarrow
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``)
and by pyarrow itself for the endpoint (``AWS_ENDPOINT_URL``, ``AWS_ENDPOINT_URL_S3``: Arrow >= 15 reads them in
``FileSystem.from_uri``, apache/arrow GH-36770 and GH-38663). Only ``from_uri`` does so — a directly constructed
``S3FileSystem()`` ignores them (apache/arrow#49643) — which is why every filesystem here comes from
:func:`resolve`, and why no ``endpoint_override`` is passed by hand. An ``endpoint_url`` in ``~/.aws/config`` is
not read by pyarrow (apache/arrow#44119): use the variable.

Both kinds of directory write through a :class:`HashingSink`, so a file's size and SHA-256 come with the write
(:class:`WrittenFile`) instead of from reading it back.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

#: Temporary files of local directories carry this suffix; a resumed job deletes leftovers.
TMP_SUFFIX = ".tmp"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+)://")
#: Called after a file's bytes are written and before they become visible (kill-and-resume tests stop there).
BeforeCommit = Callable[[], None] | None


def is_uri(spec: object) -> bool:
    """True for ``scheme://…`` other than ``file://`` (a ``file://`` URI is a local path)."""
    match = _SCHEME.match(str(spec))
    return bool(match) and match.group(1).lower() != "file"


def local_path(spec: str | os.PathLike) -> Path:
    """``spec`` as a local path (``file:///x`` -> ``/x``)."""
    text = os.fspath(spec)
    return Path(text[len("file://") :]) if isinstance(text, str) and text.lower().startswith("file://") else Path(text)


def resolve(uri: str) -> tuple[Any, str]:
    """``(pyarrow filesystem, path inside it)`` for a URI, or InputError naming what is wrong with it."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, pa.ArrowException) as err:
        raise InputError(
            f"{uri}: cannot open this storage URI ({one_line(err)}); use a local path or an s3://, gs:// "
            "or hdfs:// URI that pyarrow supports"
        ) from err


def one_line(err: BaseException) -> str:
    """The first line of an error's message (its type name when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@dataclass(frozen=True)
class WrittenFile:
    """A file as written: its name, byte size and the SHA-256 of those bytes."""

    file: str
    bytes: int
    sha256: str


class HashingSink:
    """A write-only binary stream over ``handle`` that counts and hashes every byte on its way out.

    pyarrow writes through any object with ``write`` (wrapped in a ``PythonFile``), so the checksum comes free
    with the write instead of from reading the shard back.
    """

    def __init__(self, handle):
        self._handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self._handle.write(view)
        self.digest.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:  # the caller owns the handle (it still has to sync or complete it)
        self.closed = True

    @staticmethod
    def writable() -> bool:
        return True

    @staticmethod
    def readable() -> bool:
        return False

    @staticmethod
    def seekable() -> bool:
        return False


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RemotePath:
    """A file or prefix on object storage, with the few ``Path`` methods the readers use (``name``, ``is_dir``,
    ``iterdir``, ``stat``…), so that an ``s3://`` input goes through the same code as a local one.

    It pickles as its URI (Ray ships it to workers), which rebuild the filesystem from their own environment.
    """

    def __init__(self, uri: str, fs: Any = None, path: str | None = None, info: Any = None):
        self.uri = uri.rstrip("/")
        self._fs, self._path = (fs, path) if fs is not None else (None, None)
        self._info = info  # from a listing: saves a request per file when a prefix is expanded

    @property
    def fs(self) -> Any:
        if self._fs is None:
            self._fs, self._path = resolve(self.uri)
        return self._fs

    @property
    def path(self) -> str:
        self.fs  # noqa: B018 - resolves the path with the filesystem
        return self._path.rstrip("/")

    def __reduce__(self):
        return (RemotePath, (self.uri,))

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"RemotePath({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemotePath) and other.uri == self.uri

    def __lt__(self, other: RemotePath) -> bool:
        return self.uri < other.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    @property
    def name(self) -> str:
        return self.uri.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return os.path.splitext(self.name)[1]

    def child(self, name: str) -> RemotePath:
        return RemotePath(f"{self.uri}/{name}", self.fs, f"{self.path}/{name}")

    def info(self) -> Any:
        """The ``pyarrow.fs.FileInfo``; a failure (no credentials, no such bucket) is one clear InputError."""
        if self._info is not None:
            return self._info
        try:
            return self.fs.get_file_info(self.path)
        except OSError as err:
            raise InputError(
                f"{self.uri}: cannot read ({one_line(err)}); check the URI, the bucket and the AWS "
                "credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)"
            ) from err

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self.info().type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self.info().type == pafs.FileType.Directory

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self.info().type == pafs.FileType.File

    def iterdir(self) -> Iterator[RemotePath]:
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        except OSError as err:
            raise InputError(
                f"{self.uri}: cannot list ({one_line(err)}); check the URI, the bucket and the AWS credentials"
            ) from err
        for info in infos:
            yield RemotePath(f"{self.uri}/{info.base_name}", self.fs, info.path, info)

    def resolve(self) -> RemotePath:
        return self

    def stat(self) -> _Stat:
        """Size and modification time (what the job's input fingerprint uses)."""
        info = self.info()
        return _Stat(info.size or 0, info.mtime_ns or 0)

    def open_stream(self):
        """A buffered binary file like ``open(path, "rb")``: iterable by lines (pyarrow's own file is not) and
        seekable (a byte range of a large input is read by seeking, as locally); no transparent decompression:
        the readers handle ``.gz`` themselves."""
        return io.BufferedReader(self.fs.open_input_file(self.path), buffer_size=1 << 20)

    def open_random(self):
        """A random-access file, for Parquet footers and row groups."""
        return self.fs.open_input_file(self.path)


@dataclass(frozen=True)
class _Stat:
    st_size: int
    st_mtime_ns: int


def input_path(spec: str | os.PathLike) -> Path | RemotePath:
    """An input as the readers take it: a :class:`~pathlib.Path`, or a :class:`RemotePath` for a URI."""
    return RemotePath(str(spec)) if is_uri(spec) else local_path(spec)


def open_input(path: Path | RemotePath):
    """A binary stream over an input file, local or remote."""
    return path.open_stream() if isinstance(path, RemotePath) else open(path, "rb")  # noqa: SIM115


def parquet_source(path: Path | RemotePath):
    """What ``pyarrow.parquet.ParquetFile`` opens: the path itself when local, a random-access file if remote."""
    return path.open_random() if isinstance(path, RemotePath) else path
