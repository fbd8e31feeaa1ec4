"""Text lines in, vectors out: the one place that splits, decodes and writes for ``encode`` and ``embed``.

Lines (:func:`split_lines`): a line ends at ``\\n``; a ``\\r`` right before it belongs to the terminator (CRLF
files), any other ``\\r`` is text (a lone CR is no line break, so row numbers match ``wc -l`` and every editor's
count for LF/CRLF files). A UTF-8 BOM is dropped from the first line only; a BOM further down is text. The last
line needs no terminator.

Decoding (:func:`decode_line`) takes a policy, the one place where the two commands differ:

- ``"strict"`` (``encode``'s default): a line that is not UTF-8 stops the run, naming the line.
- ``"replace"`` (``encode --encoding-errors replace``): undecodable bytes become U+FFFD.
- ``"report"`` (``embed``): the line comes back with the reason instead of a text, so the caller keeps it as a
  bad row under its own ``--on-error`` policy.

``encode`` reads every line as a row (an empty line is an empty text and gets a vector, exactly as the reference
gives it: line *i* of the input is row *i* of the output, always) and checks the whole file before anything is
written. ``embed`` (``corpus/readers.py``) reads its ``.txt`` and ``.jsonl`` lines through the same two functions.

Output (:class:`VectorWriter`): ``.npy`` (float32 ``(N, dim)``), ``.jsonl`` (``{"index": i, "embedding": [...]}``
per line) or ``.csv`` (``index`` then ``dim`` columns); ``embed`` assembles its ``.npy`` output through it too.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np

from .errors import InputError

OUTPUT_FORMATS = (".npy", ".jsonl", ".csv")
#: The policies ``encode --encoding-errors`` offers.
ENCODING_ERRORS = ("strict", "replace")
#: Every policy :func:`decode_line` knows; ``report`` is ``embed``'s.
DECODE_POLICIES = ENCODING_ERRORS + ("report",)
UTF8_BOM = b"\xef\xbb\xbf"


def split_lines(stream: Iterable[bytes], first: int = 1) -> Iterator[tuple[int, bytes]]:
    """Number a binary stream's lines from 1 and strip the BOM (first line only) and each ``\\n`` / ``\\r\\n``.

    Args:
        stream: A file opened in binary mode (or any iterable of ``\\n``-terminated byte lines).
        first: The number of the stream's first line: a byte range of a file that starts after line ``first - 1``
            (corpus/units.py) numbers its lines as the whole file does, and keeps a BOM that is not on line 1.

    Yields:
        ``(line_number, raw_line)`` with the terminator removed.
    """
    for number, line in enumerate(stream, start=first):
        if number == 1 and line.startswith(UTF8_BOM):
            line = line[3:]
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        yield number, line


def decode_line(raw: bytes, number: int, policy: str = "strict") -> tuple[str | None, str | None]:
    """Decode one line from :func:`split_lines` as UTF-8 under ``policy`` (see the module docstring).

    Returns:
        ``(text, None)``, or under ``"report"`` ``(None, reason)`` for a line that is not UTF-8.

    Raises:
        InputError: under ``"strict"``, naming the line and the first bad byte (1-based).
    """
    try:
        return raw.decode("utf-8", errors="replace" if policy == "replace" else "strict"), None
    except UnicodeDecodeError as err:
        if policy == "report":
            # embed's wording, 0-based offset: it is what skipped-row reports have always recorded.
            return None, f"not valid UTF-8 (byte {err.start})"
        raise InputError(
            f"line {number} is not valid UTF-8 (byte {err.start + 1}: "
            f"{raw[err.start : err.start + 1]!r}); fix the file or pass --encoding-errors replace"
        ) from None


def _open(path: Path) -> IO[bytes]:
    if path.is_dir():
        raise InputError(f"{path} is a directory, not a text file")
    try:
        return open(path, "rb")
    except OSError as err:
        raise InputError(f"cannot read {path}: {err.strerror}") from None


def _check_policy(encoding_errors: str) -> None:
    if encoding_errors not in ENCODING_ERRORS:
        raise InputError(f"--encoding-errors must be one of {', '.join(ENCODING_ERRORS)}")


def count_lines(path: str | Path, encoding_errors: str = "strict") -> int:
    """Number of texts in a batch file, checking every line's UTF-8 on the way (one fast pass)."""
    count = 0
    with _open(Path(path)) as handle:
        for count, raw in split_lines(handle):
            if encoding_errors == "strict":
                decode_line(raw, count, "strict")
    return count


def iter_text_chunks(path: str | Path, chunk_size: int = 8192, encoding_errors: str = "strict") -> Iterator[list[str]]:
    """Yield the file's texts (every line, empty ones too) in lists of up to ``chunk_size``, in file order."""
    _check_policy(encoding_errors)
    chunk: list[str] = []
    with _open(Path(path)) as handle:
        for number, raw in split_lines(handle):
            chunk.append(decode_line(raw, number, encoding_errors)[0])
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
    if chunk:
        yield chunk


class VectorWriter:
    """Write vectors row by row to ``.npy``, ``.jsonl`` or ``.csv``, in the order they are given.

    Args:
        path: Output file; its suffix picks the format unless ``fmt`` is given.
        rows: Total number of rows (``.npy`` pre-allocates the file).
        dimension: Vector width.
        fmt: The format (``".npy"``, ``".jsonl"``, ``".csv"``) when the name does not say it, e.g. a temporary
            file that is renamed into place afterwards.
    """

    def __init__(self, path: str | Path, rows: int, dimension: int, fmt: str | None = None):
        if fmt is None:
            self.path = self.check_path(path)
            self.suffix = self.path.suffix.lower()
        elif fmt in OUTPUT_FORMATS:
            self.path, self.suffix = Path(path), fmt
        else:
            raise ValueError(f"fmt must be one of {', '.join(OUTPUT_FORMATS)}, not {fmt!r}")
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
            if hasattr(self, "_array"):
                self._array.flush()
                del self._array
        else:
            self._handle.close()

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
