"""Finding and re-embedding damaged shards of a committed output.

Every rerun checks each committed shard cheaply (size and Parquet footer); ``embed --verify`` also compares the
SHA-256 recorded while the shard was written. A shard found missing or damaged is re-embedded alone: the manifest
says which input rows it holds (from the end of the shard before it to its own ``end``), and the input is known
unchanged because the job's fingerprint matched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import numpy as np

from .directory import DirectorySpec, open_directory
from .engines import EmbedSettings, Engine
from .manifest import ShardEntry
from .readers import CorpusReader, Record


def shard_problem(directory: DirectorySpec, name: str, entry: ShardEntry, checksum: bool = False) -> str | None:
    """What is wrong with committed shard ``name`` in ``directory`` compared with its manifest entry, or None when
    it looks whole.

    The cheap check (every rerun) is the size and the Parquet footer's row count; ``checksum`` adds the
    SHA-256 of the whole file. Entries written before sizes were recorded are checked for the footer only.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    opened = open_directory(directory)
    size = opened.size(name)
    if size is None:
        return "missing"
    if entry.bytes is not None and size != entry.bytes:
        return f"{size} bytes, the manifest says {entry.bytes}"
    try:
        rows = pq.ParquetFile(opened.source(name)).metadata.num_rows
    except (OSError, pa.ArrowException) as err:
        return f"unreadable Parquet footer ({err})"
    if rows != entry.rows:
        return f"{rows} rows, the manifest says {entry.rows}"
    if checksum and entry.sha256 and opened.sha256(name) != entry.sha256:
        return "checksum differs from the manifest's"
    return None


def check_shards(
    directory: DirectorySpec, shards: list[ShardEntry], checksum: bool = False
) -> Iterator[tuple[int, str]]:
    """``(index, what is wrong)`` for each committed shard in ``directory`` (a path, URI or opened directory)
    that does not match its entry."""
    for index, entry in enumerate(shards):
        if entry.file:
            problem = shard_problem(directory, entry.file, entry, checksum=checksum)
            if problem:
                yield index, problem


class _Span(CorpusReader):
    """The reader of ``reader``'s files whose ``chunks`` stop at ``end`` (inclusive): exactly one committed shard's
    rows, as one chunk. Both engines re-embed through the local engine's ``stream``, which reads through ``chunks``.
    """

    def __init__(self, reader: CorpusReader, end: tuple[int, int]):
        super().__init__(reader.files, reader.text_field, reader.id_field)
        self._end = end

    def chunks(self, size: int, start_after: tuple[int, int] | None = None) -> Iterator[list[Record]]:
        chunk = []
        for record in self.records(start_after):
            chunk.append(record)
            if (record.file, record.row) >= self._end:
                break
        if chunk:
            yield chunk


def reembed_shard(
    engine: Engine, reader: CorpusReader, settings: EmbedSettings, shards: list[ShardEntry], index: int
) -> tuple[list[Record], np.ndarray]:
    """The input rows of committed shard ``index`` and their vectors, embedded again by ``engine``.

    Raises:
        RuntimeError: when the input no longer yields the rows the manifest recorded for the shard.
    """
    entry = shards[index]
    start = (shards[index - 1].end[0], shards[index - 1].end[1]) if index else None
    end = (entry.end[0], entry.end[1])
    # Bad rows were decided (and listed) when the shard was first written; the same rows are bad again.
    span = replace(settings, on_error="skip", shard_rows=entry.rows + entry.skipped)
    stream = engine.stream(_Span(reader, end), span, start)
    try:
        records, vectors = next(stream)
    finally:
        stream.close()
    good = sum(1 for r in records if r.error is None)
    if (records[-1].file, records[-1].row) != end or good != entry.rows or len(vectors) != good:
        raise RuntimeError(
            f"re-reading shard {entry.file} gave {good} rows ending at "
            f"{[records[-1].file, records[-1].row]}, the manifest says {entry.rows} ending at "
            f"{list(end)}"
        )
    return records, np.asarray(vectors, dtype=np.float32)
