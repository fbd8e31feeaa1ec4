"""Crash-safe output: Parquet shards and small files written atomically, and the final ``.npy`` assembly.

Atomic means: write a temporary file in the same directory, ``fsync`` it, ``os.replace`` it over the final name,
then ``fsync`` the directory so the rename itself survives a power cut. A reader (or a resumed job) therefore sees
either the old file or the complete new one, never a torn write. Shards are hashed on their way to disk, so the
manifest can record a checksum without reading the file back; a write that fails (e.g. disk full) removes its
temporary file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..modelfiles import sha256_of  # the one chunked file hash (it also checks the model's weights)

#: Temporary files carry this suffix; a resumed job deletes leftovers.
TMP_SUFFIX = ".tmp"


def shard_name(index: int) -> str:
    """File name of shard ``index``: zero-padded so that name order is input order."""
    return f"part-{index:06d}.parquet"


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


#: Called between a temporary file's fsync and its rename (the kill-and-resume tests stop the process there).
BeforeCommit = Callable[[], None] | None


@dataclass(frozen=True)
class WrittenFile:
    """A file as written: its name, byte size and the SHA-256 of those bytes."""

    file: str
    bytes: int
    sha256: str


class HashingSink:
    """A write-only binary stream over ``handle`` that counts and hashes every byte on its way to disk.

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

    def close(self) -> None:  # the caller owns the handle (it still has to fsync it)
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


def _write_atomic(path: Path, write: Callable[[HashingSink], None], before_commit: BeforeCommit = None,
                  tmp: Path | None = None) -> WrittenFile:
    """Write ``path`` through a temporary file (``tmp``, default ``<path>.tmp``); on any failure the temporary
    file is removed (frees the space)."""
    tmp = tmp or path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as handle:
            sink = HashingSink(handle)
            write(sink)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if before_commit is not None:
        before_commit()
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return WrittenFile(path.name, sink.size, sink.digest.hexdigest())


def write_bytes_atomic(path: Path, data: bytes, before_commit: BeforeCommit = None) -> WrittenFile:
    """Replace ``path`` with ``data`` atomically."""
    return _write_atomic(path, lambda sink: sink.write(data), before_commit)


def write_json_atomic(path: Path, obj: object, before_commit: BeforeCommit = None) -> WrittenFile:
    """Replace ``path`` with ``obj`` as indented JSON, atomically."""
    data = (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    return write_bytes_atomic(path, data, before_commit)


def embeddings_table(ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str] | None = None):
    """A pyarrow table with ``id`` (string), ``embedding`` (fixed_size_list<float32>[dim]) and optional ``text``."""
    import pyarrow as pa

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids but vectors of shape {vectors.shape}")
    dim = vectors.shape[1]
    columns = {
        "id": pa.array(list(ids), type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()), dim),
    }
    if texts is not None:
        columns["text"] = pa.array(list(texts), type=pa.string())
    return pa.table(columns)


def write_shard(directory: Path, index: int, ids: Sequence[str], vectors: np.ndarray,
                texts: Sequence[str] | None = None, before_commit: BeforeCommit = None,
                name: str | None = None) -> WrittenFile:
    """Write shard ``index`` (or the shard called ``name``) atomically into ``directory``; returns its name, size
    and checksum. A named shard's temporary file carries the process id: two attempts at the same unit (a Ray
    retry beside a worker that is not quite dead) never write into one temporary file."""
    import pyarrow.parquet as pq

    table = embeddings_table(ids, vectors, texts)
    final = directory / (name or shard_name(index))
    tmp = final.with_name(f"{final.stem}.{os.getpid()}{final.suffix}{TMP_SUFFIX}") if name else None
    # One row group per shard: shards are already sized for memory, and search reads them one at a time.
    return _write_atomic(final, lambda sink: pq.write_table(table, sink, row_group_size=max(len(ids), 1),
                                                            compression="zstd"),
                         before_commit, tmp)


def shard_problem(path: Path, entry: dict, checksum: bool = False) -> str | None:
    """What is wrong with a committed shard compared with its manifest entry, or None when it looks whole.

    The cheap check (every rerun) is the size and the Parquet footer's row count; ``checksum`` adds the
    SHA-256 of the whole file. Entries written before sizes were recorded are checked for the footer only.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if entry.get("bytes") is not None and size != entry["bytes"]:
        return f"{size} bytes, the manifest says {entry['bytes']}"
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (OSError, pa.ArrowException) as err:
        return f"unreadable Parquet footer ({err})"
    if rows != entry.get("rows", rows):
        return f"{rows} rows, the manifest says {entry['rows']}"
    if checksum and entry.get("sha256") and sha256_of(path) != entry["sha256"]:
        return "checksum differs from the manifest's"
    return None


def read_vectors(path: Path) -> np.ndarray:
    """The ``embedding`` column of one Parquet file as a float32 ``(rows, dim)`` array."""
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["embedding"]).column("embedding").combine_chunks()
    return fixed_list_to_numpy(column)


def fixed_list_to_numpy(column) -> np.ndarray:
    """A fixed_size_list<float32>[dim] arrow array as ``(rows, dim)`` float32, without copying when possible."""
    if hasattr(column, "combine_chunks"):
        column = column.combine_chunks()
    dim = column.type.list_size
    values = column.flatten()  # respects slicing offsets, unlike .values
    return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


def assemble_npy(shards: list[Path], output: Path, dimension: int, rows: int) -> None:
    """Concatenate shard vectors into ``output`` (``.npy``) atomically, through ``encode``'s vector writer."""
    from ..textio import VectorWriter

    tmp = output.with_name(output.name + TMP_SUFFIX)
    try:
        with VectorWriter(tmp, rows, dimension, fmt=".npy") as array:
            for shard in shards:
                array.write(read_vectors(shard))
            if array.written != rows:
                raise RuntimeError(f"shards hold {array.written} rows, the manifest says {rows}")
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, output)
    fsync_dir(output.parent)
