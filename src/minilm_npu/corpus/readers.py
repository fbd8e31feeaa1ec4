"""Streaming readers: input files in, ``Record`` chunks out, in input order and in constant memory.

Every format yields the same thing — a :class:`Record` per input row with its 1-based row number, an id and the
text — so the job, the Ray engine and the tests share one notion of "row 17". A row that cannot be embedded
(missing or null text, a non-UTF-8 line, invalid JSON, a file that stops being readable) is still yielded, with
``error`` set, so the caller decides whether to fail or skip it. Mistakes that would make *every* row bad (a CSV or
Parquet file without the text column, an unknown extension) raise :class:`InputError` at once.

Row numbers: for ``.txt`` and ``.jsonl`` they are line numbers (blank JSONL lines are not rows); for ``.csv`` /
``.tsv`` they count data records from 1 (the header is row 0); for ``.parquet`` they are the row index plus one.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import InputError
from ..textio import decode_line, split_lines
from .inputs import FILE_ERRORS, InputFile, Unit, arrow_error, open_binary, open_parquet
from .storage import open_input

# CSV cells may hold whole documents.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass(frozen=True)
class Record:
    """One input row.

    Attributes:
        file: Index of the file in the input list.
        row: 1-based row number within that file (see the module docstring).
        id: The row's id: the ``--id-field`` value, else the row number (prefixed with the file's name when the
            input has several files).
        text: The text to embed; None for a bad row.
        error: Why the row cannot be embedded; None for a good row.
    """

    file: int
    row: int
    id: str
    text: str | None
    error: str | None = None


def read_range(stream: BinaryIO, start: int, stop: int) -> bytes:
    """Bytes ``start`` to ``stop`` of an open binary file: a seek, then one read of exactly that range."""
    stream.seek(start)
    return stream.read(stop - start)


class CorpusReader:
    """Reads input files row by row; iterate :meth:`chunks` for lists of :class:`Record`.

    Args:
        files: From :func:`expand_inputs`.
        text_field: Column / JSON key holding the text (not used for ``.txt``).
        id_field: Column / JSON key holding the id; None to use row numbers.
    """

    def __init__(self, files: list[InputFile], text_field: str = "text", id_field: str | None = None):
        self.files = files
        self.text_field = text_field
        self.id_field = id_field

    def records(self, start_after: tuple[int, int] | None = None) -> Iterator[Record]:
        """Every row of every file in order, starting after ``(file, row)`` when given (for resuming)."""
        for index in range(len(self.files)):
            skip = 0
            if start_after is not None:
                if index < start_after[0]:
                    continue
                if index == start_after[0]:
                    skip = start_after[1]
            yield from self.file_records(index, skip)

    def chunks(self, size: int, start_after: tuple[int, int] | None = None) -> Iterator[list[Record]]:
        """:meth:`records` in lists of ``size`` rows (the last one may be shorter)."""
        chunk: list[Record] = []
        for record in self.records(start_after):
            chunk.append(record)
            if len(chunk) >= size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def file_records(self, index: int, skip: int = 0, unit: Unit | None = None) -> Iterator[Record]:
        """Rows of file ``index`` with a row number above ``skip``; a read failure ends the file with a bad row.

        Args:
            index: The file's index in :attr:`files`.
            skip: Rows numbered up to this are not yielded (resuming).
            unit: Read only this part of the file, a :class:`~minilm_npu.corpus.inputs.Unit`: its byte range
                (``.txt``/``.jsonl``) or row groups (Parquet), yielding exactly the records the whole-file read
                yields for those rows; None (or a whole-file unit) reads the file from its start.
        """
        file = self.files[index]
        reader = {"txt": self._txt, "jsonl": self._jsonl, "csv": self._csv, "tsv": self._csv, "parquet": self._parquet}[
            file.format
        ]
        if unit is not None and unit.kind == "file":
            unit = None
        last = skip
        try:
            for record in reader(index, file, skip, unit):
                last = record.row
                yield record
        except InputError:
            raise
        except FILE_ERRORS + (arrow_error(),) as err:
            # Rows read before the failure stay good; the rest of the file becomes one bad "row".
            yield Record(
                index, last + 1, self._default_id(file, last + 1), None, f"unreadable file: {type(err).__name__}: {err}"
            )

    # -- helpers --------------------------------------------------------------------------------------------
    @staticmethod
    def _default_id(file: InputFile, row: int) -> str:
        return f"{file.label}:{row}" if file.label else str(row)

    def _make(self, index: int, file: InputFile, row: int, text: object, ident: object, fields: bool) -> Record:
        """Check one row's text and id values; ``fields`` says whether they came from named fields."""
        fallback = self._default_id(file, row)
        error = None
        name = f"text field {self.text_field!r}" if fields else "text"
        if text is _MISSING or text is None:
            error = f"{name} is {'missing' if text is _MISSING else 'null'}"
        elif not isinstance(text, str):
            error = f"{name} is {type(text).__name__}, not a string"
        elif self.id_field is not None and (ident is _MISSING or ident is None):
            error = f"id field {self.id_field!r} is {'missing' if ident is _MISSING else 'null'}"
        if self.id_field is None or ident is _MISSING or ident is None:
            ident = fallback
        elif not isinstance(ident, str):
            ident = str(ident)
        if error is None and (not _is_utf8(text) or not _is_utf8(ident)):
            error = "not valid UTF-8"
        if error is not None:
            return Record(index, row, ident if _is_utf8(ident) else fallback, None, error)
        return Record(index, row, ident, text)

    # -- formats --------------------------------------------------------------------------------------------
    def _lines(self, file: InputFile, unit: Unit | None) -> Iterator[tuple[int, bytes]]:
        if unit is None:
            with open_binary(file) as stream:
                yield from split_lines(stream)  # encode's line rules: BOM on line 1 only, LF or CRLF
            return
        # A unit's range starts just after a newline (or at 0), so its first line is line ``unit.lo + 1``.
        with open_input(file.path) as stream:
            data = read_range(stream, unit.start, unit.stop)
        yield from split_lines(io.BytesIO(data), unit.lo + 1)

    def _txt(self, index: int, file: InputFile, skip: int, unit: Unit | None) -> Iterator[Record]:
        for number, line in self._lines(file, unit):
            if number <= skip:
                continue
            text, problem = decode_line(line, number, "report")
            if problem is not None:
                yield Record(index, number, self._default_id(file, number), None, problem)
                continue
            yield self._make(index, file, number, text, _MISSING, fields=False)

    def _jsonl(self, index: int, file: InputFile, skip: int, unit: Unit | None) -> Iterator[Record]:
        for number, line in self._lines(file, unit):
            if number <= skip or not line.strip():
                continue
            fallback = self._default_id(file, number)
            text, problem = decode_line(line, number, "report")
            if problem is not None:
                yield Record(index, number, fallback, None, problem)
                continue
            try:
                obj = json.loads(text)
            except ValueError as err:
                yield Record(index, number, fallback, None, f"invalid JSON: {err}")
                continue
            if not isinstance(obj, dict):
                yield Record(index, number, fallback, None, f"a JSON {type(obj).__name__}, not an object")
                continue
            ident = obj.get(self.id_field, _MISSING) if self.id_field else _MISSING
            yield self._make(index, file, number, obj.get(self.text_field, _MISSING), ident, fields=True)

    def _csv(self, index: int, file: InputFile, skip: int, unit: Unit | None) -> Iterator[Record]:
        # Never split (units.py): a quoted cell may hold newlines, so a record boundary needs the file's start.
        with open_binary(file) as binary:
            # surrogateescape keeps undecodable bytes so a bad row is reported instead of failing the file.
            text = io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="")
            reader = csv.reader(text, delimiter="\t" if file.format == "tsv" else ",")
            header = next(reader, None)
            if header is None:
                return
            header[0] = header[0].lstrip("\ufeff")
            text_col = self._column(file, header, self.text_field)
            id_col = self._column(file, header, self.id_field) if self.id_field else None
            number = 0
            for cells in reader:
                if not cells:
                    continue
                number += 1
                if number <= skip:
                    continue
                value = cells[text_col] if text_col < len(cells) else _MISSING
                ident = (cells[id_col] if id_col < len(cells) else _MISSING) if id_col is not None else _MISSING
                yield self._make(index, file, number, value, ident, fields=True)

    def _column(self, file: InputFile, names: list[str], field: str) -> int:
        if field not in names:
            raise InputError(
                f"{file.path}: no column {field!r} (columns: {', '.join(names)}); "
                "choose one with --text-field / --id-field"
            )
        return names.index(field)

    def _parquet(self, index: int, file: InputFile, skip: int, unit: Unit | None) -> Iterator[Record]:
        parquet = open_parquet(file)
        names = parquet.schema_arrow.names
        columns = [names[self._column(file, names, self.text_field)]]
        if self.id_field:
            columns.append(names[self._column(file, names, self.id_field)])
        # Jump straight to the row group holding the first wanted row, so resuming a big file is cheap.
        # A unit is a range of whole row groups; ``unit.lo`` counts the rows of the groups before it.
        first, stop, start = (unit.start, unit.stop, unit.lo) if unit is not None else (0, parquet.num_row_groups, 0)
        groups = []
        for group in range(first, stop):
            rows = parquet.metadata.row_group(group).num_rows
            if start + rows > skip or groups:
                groups.append(group)
            else:
                start += rows
        if not groups:
            return
        number = start
        for batch in parquet.iter_batches(batch_size=4096, row_groups=groups, columns=columns):
            texts = batch.column(0).to_pylist()
            idents = batch.column(1).to_pylist() if self.id_field else [_MISSING] * len(texts)
            for text, ident in zip(texts, idents):
                number += 1
                if number > skip:
                    yield self._make(index, file, number, text, ident, fields=True)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING: object = _Missing()


def _is_utf8(value: str) -> bool:
    """False for strings holding lone surrogates (undecodable bytes kept by ``surrogateescape``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
