"""Crash-safe output: Parquet shards and small files written atomically, and the final ``.npy`` assembly.

Atomic means: write a temporary file in the same directory, ``fsync`` it, ``os.replace`` it over the final name,
then ``fsync`` the directory so the rename itself survives a power cut. A reader (or a resumed job) therefore sees
either the old file or the complete new one, never a torn write. Shards are hashed on their way to disk, so the
manifest can record a checksum without reading the file back; a write that fails (e.g. disk full) removes its
temporary file. On object storage (``s3://…``) there is no rename: see :mod:`.directory` and :mod:`.objectstore`
for what stands in for it; every function here takes a local path, a URI or an opened directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .directory import DirectorySpec, open_directory
from .readers import Record
from .storage import TMP_SUFFIX, BeforeCommit, HashingSink, WrittenFile, fsync_dir

__all__ = [
    "TMP_SUFFIX",
    "BeforeCommit",
    "HashingSink",
    "WrittenFile",
    "assemble_npy",
    "embeddings_table",
    "fsync_dir",
    "read_vectors",
    "shard_name",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_records",
    "write_shard",
]


def write_records(
    directory: DirectorySpec,
    index: int,
    records: Sequence[Record],
    vectors: np.ndarray,
    keep_text: bool,
    before_commit: BeforeCommit = None,
    name: str | None = None,
) -> WrittenFile:
    """:func:`write_shard` for good rows as the readers give them: their ids, and their texts with ``keep_text``."""
    texts = [r.text for r in records] if keep_text else None
    return write_shard(directory, index, [r.id for r in records], vectors, texts, before_commit, name)


def shard_name(index: int) -> str:
    """File name of shard ``index``: zero-padded so that name order is input order."""
    return f"part-{index:06d}.parquet"


def write_bytes_atomic(
    directory: DirectorySpec, name: str, data: bytes, before_commit: BeforeCommit = None
) -> WrittenFile:
    """Replace file ``name`` in ``directory`` (a path, URI or opened directory) with ``data`` atomically."""
    return open_directory(directory).write(name, lambda sink: sink.write(data), before_commit)


def write_json_atomic(
    directory: DirectorySpec, name: str, obj: object, before_commit: BeforeCommit = None
) -> WrittenFile:
    """Replace file ``name`` in ``directory`` with ``obj`` as indented JSON, atomically."""
    data = (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
    return write_bytes_atomic(directory, name, data, before_commit)


def embeddings_table(ids: Sequence[str], vectors: np.ndarray, texts: Sequence[str | None] | None = None):
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


def write_shard(
    directory: DirectorySpec,
    index: int,
    ids: Sequence[str],
    vectors: np.ndarray,
    texts: Sequence[str | None] | None = None,
    before_commit: BeforeCommit = None,
    name: str | None = None,
) -> WrittenFile:
    """Write shard ``index`` (or the shard called ``name``) atomically into ``directory`` (a path, URI or opened
    directory); returns its name, size and checksum. A named shard's local temporary file carries the process
    id: two attempts at the same unit (a Ray retry beside a worker that is not quite dead) never write into one
    temporary file."""
    import pyarrow.parquet as pq

    table = embeddings_table(ids, vectors, texts)
    final = name or shard_name(index)
    stem, suffix = os.path.splitext(final)
    tmp = f"{stem}.{os.getpid()}{suffix}{TMP_SUFFIX}" if name else None
    # One row group per shard: shards are already sized for memory, and search reads them one at a time.
    return open_directory(directory).write(
        final,
        lambda sink: pq.write_table(table, sink, row_group_size=max(len(ids), 1), compression="zstd"),
        before_commit,
        tmp,
    )


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
