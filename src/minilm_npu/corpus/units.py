"""Units of work: the input cut into pieces planned up front, so one big file is read by many workers at once.

A :class:`Unit` is a slice of one input file that a worker reads on its own, without reading anything before it:

- ``.txt`` / ``.jsonl`` (uncompressed): a **byte range** that starts just after a newline, holding ``shard_rows``
  lines. The planner reads the file once and counts newlines (``bytes.count`` at memory speed, numpy only in the
  blocks where a cut falls, so planning costs little more than reading the file), handing out each unit as
  soon as its cut is found, so each unit knows its first line number exactly: rows are line numbers in both
  formats (a blank JSONL line is not a row but still counts as a line), so the worker's row numbers and ids
  equal the whole-file reader's.
- ``.parquet``: a **range of row groups** from the file's footer, consecutive groups until the range holds at
  least ``shard_rows`` rows (a row group is never split); the rows before it give its first row number.
- ``.csv`` / ``.tsv`` and anything gzipped: **one unit per file**, read from its start by one worker. Such a file
  cannot be entered part-way: a quoted CSV cell may hold newlines, so a newline is a record boundary only if the
  parsing from the file's start says so, and a gzip stream can only be decompressed from its start. Cutting them
  into row ranges would make every range re-read (or re-parse) the file up to its start. Its shards are committed
  when the whole file is done, so a driver killed mid-file redoes that file.

A worker writes a unit's rows as shards of at most ``shard_rows`` rows, the shard boundaries counted from the
unit's first row, so a line unit is exactly one shard. The plan depends only on the input files' bytes and
``shard_rows`` (and the resume cursor), so a retried unit rewrites the same shard names, and shard names — input
file index, then the row the shard starts after, zero-padded — sort in input order.

Lines are counted here only (:func:`line_cuts`): the planner's cuts and the job's row count for its progress bar
(:func:`count_rows`) come from the same scan, so they cannot disagree.
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from dataclasses import replace
from typing import BinaryIO

import numpy as np

from .inputs import FILE_ERRORS, InputFile, Unit, arrow_error, open_binary, open_parquet
from .storage import open_input

__all__ = ["BLOCK_BYTES", "Unit", "count_lines", "count_rows", "file_units", "line_cuts", "plan_units"]

#: Bytes read at a time while counting newlines: large enough that the count runs at memory speed.
BLOCK_BYTES = 16 << 20


def line_cuts(stream, every: int) -> Generator[int, None, tuple[int, int]]:
    """Where to cut a text file into pieces of ``every`` lines, found in one pass as the file is read.

    Args:
        stream: The file, open in binary mode at its start.
        every: Lines per piece.

    Yields:
        The byte offset just after every ``every``-th newline, in order (the last may be the file's end).

    Returns:
        ``(lines, size)``: the number of lines (a last line without a newline counts) and the size in bytes.
    """
    lines = size = 0
    wanted = every  # the newline (1-based, over the whole file) the next cut follows
    last = b"\n"
    while block := stream.read(BLOCK_BYTES):
        count = block.count(b"\n")  # memory speed; only blocks holding a cut pay for locating newlines
        if lines + count >= wanted:
            ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 0x0A)
            while wanted <= lines + count:
                yield size + int(ends[wanted - lines - 1]) + 1
                wanted += every
        lines += count
        size += len(block)
        last = block[-1:]
    return lines + (size > 0 and last != b"\n"), size


def count_lines(stream: BinaryIO) -> int:
    """The number of lines in a binary stream, as :func:`line_cuts` counts them (a last line without a newline
    counts): the scan without a cut."""
    scan = line_cuts(stream, sys.maxsize)
    while True:
        try:
            next(scan)
        except StopIteration as end:
            return end.value[0]


def count_rows(files: list[InputFile]) -> int:
    """Rows in the input, cheaply: Parquet metadata, line counts elsewhere (an estimate for CSV/JSONL, whose
    quoted newlines and blank lines are not rows)."""
    total = 0
    for file in files:
        try:
            if file.format == "parquet":
                total += open_parquet(file).metadata.num_rows
                continue
            with open_binary(file) as stream:
                total += count_lines(stream) - (file.format in ("csv", "tsv"))  # the header is no row
        except FILE_ERRORS + (arrow_error(),):
            continue  # reported as a bad row when the file is read for real
    return max(total, 0)


def file_units(index: int, file: InputFile, shard_rows: int, offset: int = 0, lo: int = 0) -> Iterator[Unit]:
    """The units of one input file in order (see the module docstring for how each format is cut).

    A text file's units come out while it is still being scanned, so work starts before a huge file is planned.
    ``offset`` / ``lo`` start a text file's plan at a byte offset just after line ``lo`` (a resume: the manifest
    records where each committed unit's bytes ended), so the part before it is not scanned again.
    """
    if file.gzip or file.format not in ("txt", "jsonl", "parquet"):
        yield Unit(index, "file")
        return
    if file.format == "parquet":
        metadata = open_parquet(file).metadata
        first, lo, rows = 0, 0, 0
        for group in range(metadata.num_row_groups):
            rows += metadata.row_group(group).num_rows
            if rows >= shard_rows or group == metadata.num_row_groups - 1:
                yield Unit(index, "groups", first, group + 1, lo, lo + rows, lo)
                first, lo, rows = group + 1, lo + rows, 0
        return
    with open_input(file.path) as stream:
        stream.seek(offset)
        cuts = line_cuts(stream, shard_rows)
        start, first = offset, lo
        while True:
            try:
                cut = offset + next(cuts)
            except StopIteration as end:
                lines, size = end.value
                break
            yield Unit(index, "lines", start, cut, lo, lo + shard_rows, lo)
            start, lo = cut, lo + shard_rows
    if offset + size > start:  # the lines after the last cut
        yield Unit(index, "lines", start, offset + size, lo, first + lines, lo)


def plan_units(
    files: list[InputFile], shard_rows: int, start_after: tuple[int, int] | None = None, offset: int | None = None
) -> Iterator[Unit]:
    """Every unit of the input in input order, beginning after ``start_after = (file, row)`` (a resume cursor).

    A unit wholly before the cursor is left out; one the cursor falls inside is kept with ``skip`` at the
    cursor (possible only when the job was started with other unit boundaries, e.g. by the local engine).
    ``offset``, the byte offset just after the cursor's row in a ``.txt``/``.jsonl`` file, lets the plan start
    there instead of scanning the file's committed part again. Files are planned one at a time as the caller
    advances, so work can start before a big input is planned.
    """
    first_file, cursor = start_after if start_after else (0, 0)
    for index in range(first_file, len(files)):
        resume = (
            index == first_file
            and offset is not None
            and not files[index].gzip
            and files[index].format in ("txt", "jsonl")
        )
        planned = (
            file_units(index, files[index], shard_rows, offset, cursor)
            if resume
            else file_units(index, files[index], shard_rows)
        )
        for unit in planned:
            if index > first_file or cursor <= unit.lo:
                yield unit
            elif unit.hi is None or cursor < unit.hi:
                yield replace(unit, skip=cursor)
