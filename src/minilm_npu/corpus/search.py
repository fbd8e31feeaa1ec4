"""Exact cosine top-k over an embedded Parquet corpus, one record batch at a time.

Memory is bounded by ``batch_rows`` vectors plus ``k`` candidates per query, whatever the corpus size: each batch
is scored with one matrix product and merged into the running top-k. Ids and texts are fetched only for the final
hits, from the row groups that hold them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import Encoder
from ..errors import InputError
from .directory import open_directory
from .manifest import Manifest
from .repair import shard_problem
from .storage import RemotePath, input_path, parquet_source

#: How to mend a damaged shard of an embed output: the job re-embeds exactly the shards that fail its checks.
REPAIR_HINT = "rerun the same `minilm-npu embed` command to re-embed it"
#: Vectors scored per step: 65,536 x 384 float32 = 96 MiB.
DEFAULT_BATCH_ROWS = 65536


@dataclass
class Hit:
    """One search result."""

    rank: int
    id: str
    score: float
    text: str | None = None


def corpus_files(corpus: str | os.PathLike) -> list[Path | RemotePath]:
    """The Parquet files of a corpus, in row order: a dataset directory (manifest order), or one file; local, or
    on object storage (``s3://bucket/prefix``: :class:`~minilm_npu.corpus.storage.RemotePath` entries).

    Raises:
        InputError: when the path holds no Parquet files or the manifest says the job is unfinished.
    """
    path = input_path(corpus)
    if path.is_file():
        if path.suffix.lower() not in (".parquet", ".pq"):
            raise InputError(
                f"{path}: not a Parquet file; search takes an output directory of `minilm-npu embed` or a .parquet file"
            )
        return [path]
    if not path.is_dir():
        raise InputError(f"{path}: no such corpus")
    directory = open_directory(corpus)
    manifest = Manifest.load(directory)
    if manifest is not None:
        if not manifest.complete:
            raise InputError(f"{path}: the embedding job has not finished; rerun `minilm-npu embed` to complete it")
        files = []
        for entry in manifest.shards:
            if entry.file:
                problem = shard_problem(directory, entry.file, entry)
                if problem:
                    raise InputError(f"{directory.describe(entry.file)}: damaged shard ({problem}); {REPAIR_HINT}")
                files.append(_child(path, entry.file))
        return files
    files = sorted(p for p in path.iterdir() if p.name.endswith(".parquet") and not p.name.startswith((".", "_")))
    if not files:
        raise InputError(f"{path}: holds no .parquet files")
    return files


def _child(path: Path | RemotePath, name: str) -> Path | RemotePath:
    return path.child(name) if isinstance(path, RemotePath) else path / name


def corpus_model(corpus: str | os.PathLike) -> str | None:
    """The model a corpus was embedded with (from its manifest), or None when unknown."""
    path = input_path(corpus)
    manifest = Manifest.load(open_directory(corpus)) if path.is_dir() else None
    return manifest.fingerprint.get("model") if manifest else None


def _batch_vectors(column) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    elif pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = column.value_lengths().to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise InputError("embedding column holds vectors of different lengths")
        dim = int(lengths[0]) if len(lengths) else 0
    else:
        raise InputError(f"embedding column has type {column.type}, not a list of floats")
    if column.null_count:
        raise InputError("embedding column holds nulls")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(-1, dim) if dim else values.reshape(len(column), 0)


def search_vectors(
    corpus: str | os.PathLike, queries: np.ndarray, k: int = 10, batch_rows: int = DEFAULT_BATCH_ROWS
) -> list[list[Hit]]:
    """Top-``k`` rows by cosine similarity for each query vector.

    Args:
        corpus: See :func:`corpus_files`.
        queries: float32 ``(Q, dim)`` or ``(dim,)``; normalised here, so raw vectors work too.
        k: Hits per query (fewer when the corpus is smaller).
        batch_rows: Corpus vectors scored at once (memory bound).

    Returns:
        One list of :class:`Hit` per query, best first; ties keep corpus order. ``text`` is filled when the
        corpus has a ``text`` column.
    """
    import pyarrow.parquet as pq

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, not {k!r}")
    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InputError("a query vector is all zeros")
    q = q / norms
    files = corpus_files(corpus)
    best_scores = np.empty((len(q), 0), dtype=np.float32)
    best_pos = np.empty((len(q), 0), dtype=np.int64)
    offsets, offset = [], 0
    for path in files:
        parquet = _open(path)
        if "embedding" not in parquet.schema_arrow.names:
            raise InputError(f"{path}: no 'embedding' column")
        offsets.append(offset)
        for batch in _batches(path, parquet, batch_rows):
            emb = _batch_vectors(batch.column(0))
            if emb.shape[1] != q.shape[1]:
                raise InputError(
                    f"{path}: corpus vectors have {emb.shape[1]} dimensions, the query "
                    f"{q.shape[1]}; embed the query with the corpus's model"
                )
            row_norms = np.linalg.norm(emb, axis=1)
            scores = (emb @ q.T) / np.where(row_norms > 0, row_norms, 1.0)[:, None]  # (n, Q)
            take = min(k, len(emb))
            if take == 0:
                continue
            part = (
                np.argpartition(-scores, take - 1, axis=0)[:take]
                if take < len(emb)
                else np.broadcast_to(np.arange(len(emb))[:, None], scores.shape)
            )
            cand_scores = np.take_along_axis(scores, part, axis=0).T
            best_scores = np.concatenate([best_scores, cand_scores], axis=1)
            best_pos = np.concatenate([best_pos, (part + offset).T.astype(np.int64)], axis=1)
            best_scores, best_pos = _top(best_scores, best_pos, k)
            offset += len(emb)
    return _resolve(files, offsets, best_scores, best_pos, pq)


def _open(path: Path | RemotePath):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(parquet_source(path))
    except (OSError, pa.ArrowException) as err:
        raise InputError(
            f"{path}: unreadable Parquet file ({err}); if it came from `minilm-npu embed`, {REPAIR_HINT}"
        ) from err


def _batches(path: Path | RemotePath, parquet: Any, batch_rows: int) -> Iterator[Any]:
    """The embedding column in record batches; a page that cannot be decoded names its file."""
    import pyarrow as pa

    try:
        yield from parquet.iter_batches(batch_size=batch_rows, columns=["embedding"])
    except (OSError, pa.ArrowException) as err:
        raise InputError(
            f"{path}: damaged Parquet data ({err}); if it came from `minilm-npu embed`, {REPAIR_HINT}"
        ) from err


def _top(scores: np.ndarray, pos: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep each query's best ``k``: highest score first, earlier corpus row first on ties."""
    order = (
        np.stack([np.lexsort((pos[i], -scores[i]))[:k] for i in range(len(scores))])
        if len(scores)
        else np.empty((0, 0), dtype=np.int64)
    )
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(pos, order, axis=1)


def _resolve(files: list, offsets: list[int], scores: np.ndarray, pos: np.ndarray, pq: Any) -> list[list[Hit]]:
    """Fetch id (and text) for the final hits, reading only the row groups that hold them."""
    wanted = sorted(set(pos.ravel().tolist()))
    found: dict[int, tuple[str, str | None]] = {}
    starts = np.asarray(offsets)
    by_file: dict[int, list[int]] = {}
    for p in wanted:
        by_file.setdefault(int(np.searchsorted(starts, p, side="right") - 1), []).append(p)
    for index, positions in by_file.items():
        parquet = pq.ParquetFile(parquet_source(files[index]))
        names = parquet.schema_arrow.names
        columns = [c for c in ("id", "text") if c in names]
        group_starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)])
        groups: dict[int, list[int]] = {}
        for p in positions:
            row = p - offsets[index]
            groups.setdefault(int(np.searchsorted(group_starts, row, side="right") - 1), []).append(p)
        for group, members in groups.items():
            table = parquet.read_row_group(group, columns=columns)
            ids = table.column("id").to_pylist() if "id" in columns else None
            texts = table.column("text").to_pylist() if "text" in columns else None
            for p in members:
                row = p - offsets[index] - int(group_starts[group])
                found[p] = (str(ids[row]) if ids is not None else str(p), texts[row] if texts is not None else None)
    return [
        [
            Hit(rank=r + 1, id=found[int(p)][0], score=float(s), text=found[int(p)][1])
            for r, (s, p) in enumerate(zip(scores[i], pos[i]))
        ]
        for i in range(len(scores))
    ]


def search_corpus(
    corpus: str | os.PathLike,
    queries: str | list[str],
    encoder: Encoder,
    k: int = 10,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> list[Hit] | list[list[Hit]]:
    """Embed ``queries`` with ``encoder`` and search ``corpus``; one list of hits for a single string.

    Raises:
        InputError: when the corpus was embedded with another model than ``encoder``'s.
    """
    model = corpus_model(corpus)
    ours = encoder.model_name
    if model and ours and model != ours:
        raise InputError(f"{corpus} was embedded with {model}, the query encoder is {ours}; pass the same --model-path")
    single = isinstance(queries, str)
    vectors = encoder.encode([queries] if single else list(queries), normalize_embeddings=True)
    hits = search_vectors(corpus, np.asarray(vectors), k=k, batch_rows=batch_rows)
    return hits[0] if single else hits
