"""The input of a corpus job: which files, in which format, and the :class:`Unit` pieces work is cut into.

The readers (:mod:`.readers`) turn a file, or one unit of it, into rows; the planner (:mod:`.units`) cuts files into
units and counts their rows. Both take the types here, so neither imports the other.
"""

from __future__ import annotations

import csv
import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from ..errors import InputError
from .storage import RemotePath, input_path, open_input, parquet_source

#: File name endings we read, mapped to a format; each may also end in ``.gz``.
SUFFIXES = {
    "txt": "txt",
    "text": "txt",
    "jsonl": "jsonl",
    "ndjson": "jsonl",
    "csv": "csv",
    "tsv": "tsv",
    "tab": "tsv",
    "parquet": "parquet",
    "pq": "parquet",
}

#: Errors that mean "this file cannot be read (any further)" rather than "this row is bad".
FILE_ERRORS: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error, csv.Error)


@dataclass(frozen=True)
class InputFile:
    """One input file: where it is, how to read it, and the label used in ids and messages."""

    path: Path | RemotePath  # RemotePath: an object on object storage (s3://bucket/key)
    format: str
    gzip: bool
    label: str


@dataclass(frozen=True)
class Unit:
    """One piece of work: rows ``skip < row <= hi`` of input file ``file``, readable without what comes before it.

    Attributes:
        file: Index of the file in the input list.
        kind: ``"lines"`` (a byte range), ``"groups"`` (a row-group range) or ``"file"`` (the whole file).
        start / stop: Byte offsets ``[start, stop)`` for ``lines``; row-group indices ``[start, stop)`` for
            ``groups``; unused (0 / None) for ``file``.
        lo: Rows numbered up to ``lo`` lie before the unit (lines before ``start``, rows of the row groups
            before ``start``; 0 for a whole file).
        hi: The last row number the unit can hold; None when unknown (a whole file).
        skip: Rows up to this are left out: ``lo``, or the resume cursor when it falls inside the unit.
    """

    file: int
    kind: str
    start: int = 0
    stop: int | None = None
    lo: int = 0
    hi: int | None = None
    skip: int = 0


def detect_format(path: Path | RemotePath) -> tuple[str, bool]:
    """``(format, gzipped)`` from the file name, e.g. ``("jsonl", True)`` for ``docs.jsonl.gz``.

    Raises:
        InputError: for an extension we do not read.
    """
    name = path.name.lower()
    gzipped = name.endswith(".gz")
    if gzipped:
        name = name[:-3]
    suffix = name.rsplit(".", 1)[-1] if "." in name else ""
    if suffix not in SUFFIXES:
        raise InputError(f"{path}: unsupported input type; use .txt, .jsonl, .csv, .tsv or .parquet (optionally .gz)")
    fmt = SUFFIXES[suffix]
    if fmt == "parquet" and gzipped:
        raise InputError(f"{path}: gzipped Parquet is not supported; Parquet compresses inside the file")
    return fmt, gzipped


def expand_inputs(spec: str | os.PathLike | list) -> list[InputFile]:
    """The input files for a file, a directory (its readable files, sorted) or a list of paths.

    Raises:
        InputError: when nothing is found or a path does not exist.
    """
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    paths: list[Path | RemotePath] = []
    for item in specs:
        path = input_path(item)  # a Path, or a RemotePath for s3:// and other storage URIs
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and not p.name.startswith((".", "_")) and _is_supported(p)
            )
            if not found:
                raise InputError(f"{path}: directory holds no .txt/.jsonl/.csv/.tsv/.parquet files")
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        else:
            raise InputError(f"{path}: no such file or directory")
    single = len(paths) == 1
    files = []
    for path in paths:
        fmt, gzipped = detect_format(path)
        files.append(InputFile(path=path, format=fmt, gzip=gzipped, label="" if single else path.name))
    return files


def _is_supported(path: Path | RemotePath) -> bool:
    try:
        detect_format(path)
    except InputError:
        return False
    return True


def open_binary(file: InputFile) -> BinaryIO:
    """The file's bytes from its start, decompressed when it is gzipped."""
    raw = open_input(file.path)  # closed by the caller's context manager
    return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb")) if file.gzip else raw


def open_parquet(file: InputFile):
    """The input as a ``pyarrow.parquet.ParquetFile`` (metadata is read; row groups on demand)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(parquet_source(file.path))


def arrow_error() -> type[Exception]:
    """pyarrow's base exception (OSError where pyarrow is missing), beside :data:`FILE_ERRORS`."""
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency of the corpus extra
        return OSError
    return pa.ArrowException
