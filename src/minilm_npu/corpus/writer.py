"""Crash-safe output: Parquet shards and small files written atomically, and the final ``.npy`` assembly.

Atomic means: write a temporary file in the same directory, ``fsync`` it, ``os.replace`` it over the final name,
then ``fsync`` the directory so the rename itself survives a power cut. A reader (or a resumed job) therefore sees
either the old file or the complete new one, never a torn write.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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


def _commit(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    _commit(tmp, path)


def write_json_atomic(path: Path, obj: object) -> None:
    """Replace ``path`` with ``obj`` as indented JSON, atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


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
                texts: Sequence[str] | None = None) -> str:
    """Write shard ``index`` atomically into ``directory``; returns its file name."""
    import pyarrow.parquet as pq

    table = embeddings_table(ids, vectors, texts)
    final = directory / shard_name(index)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    with open(tmp, "wb") as handle:
        # One row group per shard: shards are already sized for memory, and search reads them one at a time.
        pq.write_table(table, handle, row_group_size=max(len(ids), 1), compression="zstd")
        handle.flush()
        os.fsync(handle.fileno())
    _commit(tmp, final)
    return final.name


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
    """Concatenate shard vectors into ``output`` (``.npy``) through a memory map, atomically."""
    tmp = output.with_name(output.name + TMP_SUFFIX)
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dimension))
    start = 0
    for shard in shards:
        vectors = read_vectors(shard)
        array[start:start + len(vectors)] = vectors
        start += len(vectors)
    if start != rows:
        raise RuntimeError(f"shards hold {start} rows, the manifest says {rows}")
    array.flush()
    del array
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    _commit(tmp, output)
