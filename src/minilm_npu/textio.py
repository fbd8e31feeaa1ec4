"""Batch files in, vector files out — streamed, so a file of millions of lines never sits in memory whole.

Input: one text per line, UTF-8 (a BOM is tolerated), ``\\n`` or ``\\r\\n``. An empty line is an empty text and
gets a vector, exactly as the reference would give it: line *i* of the input is row *i* of the output, always.
A line that is not valid UTF-8 stops the run *before anything is written*, naming the line
(``encoding_errors="replace"`` substitutes U+FFFD instead).

Output: ``.npy`` (float32 ``(N, dim)``), ``.jsonl`` (``{"index": i, "embedding": [...]}`` per line) or ``.csv``
(``index`` then ``dim`` columns).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from .errors import InputError

OUTPUT_FORMATS = (".npy", ".jsonl", ".csv")
ENCODING_ERRORS = ("strict", "replace")


def _decode(raw: bytes, line_number: int, errors: str) -> str:
    if line_number == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as err:
        raise InputError(f"line {line_number} is not valid UTF-8 (byte {err.start + 1}: "
                         f"{raw[err.start:err.start + 1]!r}); fix the file or pass --encoding-errors replace") from None


def _open(path: Path) -> IO[bytes]:
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a text file")
    try:
        return open(path, "rb")
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None


def count_lines(path: str | Path, encoding_errors: str = "strict") -> int:
    """Number of texts in a batch file, checking every line's UTF-8 on the way (one fast pass)."""
    path = Path(path)
    count = 0
    with _open(path) as handle:
        for count, raw in enumerate(handle, start=1):
            if encoding_errors == "strict":
                _decode(raw, count, "strict")
    return count


def iter_text_chunks(path: str | Path, chunk_size: int = 8192,
                     encoding_errors: str = "strict") -> Iterator[list[str]]:
    """Yield the file's texts in lists of up to ``chunk_size``, in file order."""
    if encoding_errors not in ENCODING_ERRORS:
        raise InputError(f"--encoding-errors must be one of {', '.join(ENCODING_ERRORS)}")
    chunk: list[str] = []
    with _open(Path(path)) as handle:
        for line_number, raw in enumerate(handle, start=1):
            chunk.append(_decode(raw, line_number, encoding_errors))
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


class VectorWriter:
    """Write vectors row by row to ``.npy``, ``.jsonl`` or ``.csv``, in the order they are given.

    Args:
        path: Output file; the suffix picks the format.
        rows: Total number of rows (``.npy`` pre-allocates the file).
        dimension: Vector width.
    """

    def __init__(self, path: str | Path, rows: int, dimension: int):
        self.path = self.check_path(path)
        self.suffix = self.path.suffix.lower()
        self.rows, self.dimension, self.written = rows, dimension, 0
        if self.suffix == ".npy":
            self._array = np.lib.format.open_memmap(self.path, mode="w+", dtype=np.float32, shape=(rows, dimension))
        else:
            self._handle = open(self.path, "w", encoding="utf-8", newline="")
            if self.suffix == ".csv":
                self._csv = csv.writer(self._handle)
                self._csv.writerow(["index"] + [f"dim_{i}" for i in range(dimension)])

    @staticmethod
    def check_path(path: str | Path) -> Path:
        """Check an output path before any work: a known suffix and an existing directory."""
        path = Path(path)
        if path.suffix.lower() not in OUTPUT_FORMATS:
            raise InputError(f"output {path} must end in one of {', '.join(OUTPUT_FORMATS)}")
        if not path.parent.resolve().is_dir():
            raise InputError(f"output directory {path.parent} does not exist")
        return path

    def write(self, vectors: np.ndarray) -> None:
        """Append a block of vectors."""
        start, stop = self.written, self.written + len(vectors)
        if self.suffix == ".npy":
            self._array[start:stop] = vectors
        elif self.suffix == ".jsonl":
            for offset, vector in enumerate(vectors):
                self._handle.write(json.dumps({"index": start + offset, "embedding": vector.tolist()}) + "\n")
        else:
            for offset, vector in enumerate(vectors):
                self._csv.writerow([start + offset] + [repr(float(x)) for x in vector])
        self.written = stop

    def close(self) -> None:
        """Flush and close the file."""
        if self.suffix == ".npy":
            self._array.flush()
            del self._array
        else:
            self._handle.close()

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
