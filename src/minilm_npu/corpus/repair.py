"""Finding and re-embedding damaged shards of a committed output.

Every rerun checks each committed shard cheaply (size and Parquet footer); ``embed --verify`` also compares the
SHA-256 recorded while the shard was written. A shard found missing or damaged is re-embedded alone: the manifest
says which input rows it holds (from the end of the shard before it to its own ``end``), and the input is known
unchanged because the job's fingerprint matched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from .readers import CorpusReader, Record
from .writer import shard_problem


def check_shards(directory, shards: list[dict], checksum: bool = False) -> Iterator[tuple[int, str]]:
    """``(index, what is wrong)`` for each committed shard in ``directory`` (a path, URI or opened directory)
    that does not match its entry."""
    for index, entry in enumerate(shards):
        if entry.get("file"):
            problem = shard_problem(directory, entry["file"], entry, checksum=checksum)
            if problem:
                yield index, problem


class _Span:
    """A reader whose ``chunks`` stop at ``end`` (inclusive): exactly one committed shard's rows.

    Anything else is the full reader's (an engine that reads files itself, like Ray's, gets the full reader and
    its first shard is taken).
    """

    def __init__(self, reader: CorpusReader, end: tuple[int, int]):
        self._reader = reader
        self._end = end

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def chunks(self, size: int, start_after: tuple[int, int] | None = None) -> Iterator[list[Record]]:
        chunk = []
        for record in self._reader.records(start_after):
            chunk.append(record)
            if (record.file, record.row) >= self._end:
                break
        if chunk:
            yield chunk


def reembed_shard(
    engine: Any, reader: CorpusReader, settings: Any, shards: list[dict], index: int
) -> tuple[list[Record], np.ndarray]:
    """The input rows of committed shard ``index`` and their vectors, embedded again by ``engine``.

    Raises:
        RuntimeError: when the input no longer yields the rows the manifest recorded for the shard.
    """
    entry = shards[index]
    start = tuple(shards[index - 1]["end"]) if index else None
    end = tuple(entry["end"])
    # Bad rows were decided (and listed) when the shard was first written; the same rows are bad again.
    span = replace(settings, on_error="skip", shard_rows=entry["rows"] + entry["skipped"])
    stream = engine.stream(_Span(reader, end), span, start)
    try:
        records, vectors = next(stream)
    finally:
        stream.close()
    good = sum(1 for r in records if r.error is None)
    if (records[-1].file, records[-1].row) != end or good != entry["rows"] or len(vectors) != good:
        raise RuntimeError(
            f"re-reading shard {entry['file']} gave {good} rows ending at "
            f"{[records[-1].file, records[-1].row]}, the manifest says {entry['rows']} ending at "
            f"{list(end)}"
        )
    return records, np.asarray(vectors, dtype=np.float32)
