"""Streaming readers: every format, gzip, row numbers, ids, bad rows and resuming from a cursor."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minilm_npu.corpus.inputs import detect_format, expand_inputs
from minilm_npu.corpus.readers import CorpusReader
from minilm_npu.corpus.units import count_rows
from minilm_npu.errors import InputError


def read(path, **kwargs):
    start_after = kwargs.pop("start_after", None)
    return list(CorpusReader(expand_inputs(path), **kwargs).records(start_after))


def good(records):
    return [(r.row, r.id, r.text) for r in records if r.error is None]


def test_detect_format():
    from pathlib import Path

    assert detect_format(Path("a.JSONL.gz")) == ("jsonl", True)
    assert detect_format(Path("a.tsv")) == ("tsv", False)
    with pytest.raises(InputError, match="unsupported"):
        detect_format(Path("a.xlsx"))
    with pytest.raises(InputError, match="gzipped Parquet"):
        detect_format(Path("a.parquet.gz"))


def test_txt_lines_crlf_bom_empty_and_bad_utf8(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbfhello\r\n\nsecond line  \nbad \xff byte\nlast")
    records = read(path)
    assert good(records) == [(1, "1", "hello"), (2, "2", ""), (3, "3", "second line  "), (5, "5", "last")]
    bad = [r for r in records if r.error]
    assert [(r.row, r.id) for r in bad] == [(4, "4")] and "UTF-8" in bad[0].error
    assert count_rows(expand_inputs(path)) == 5


def test_txt_gzip_and_start_after(tmp_path):
    path = tmp_path / "in.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(f"t{i}\n" for i in range(1, 11)))
    assert [r.text for r in read(path)] == [f"t{i}" for i in range(1, 11)]
    assert [r.row for r in read(path, start_after=(0, 7))] == [8, 9, 10]
    assert count_rows(expand_inputs(path)) == 10


def test_jsonl_fields_and_bad_rows(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [
        json.dumps({"text": "ok", "id": 7}),
        "",
        json.dumps({"body": "no text"}),
        json.dumps({"text": None, "id": "n"}),
        json.dumps({"text": 3}),
        "{not json",
        "[1, 2]",
        json.dumps({"text": "no id"}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records = read(path, id_field="id")
    assert good(records) == [(1, "7", "ok")]
    errors = {r.row: r.error for r in records if r.error}
    assert errors[3] == "text field 'text' is missing"
    assert errors[4] == "text field 'text' is null" and 2 not in errors  # blank lines are not rows
    assert "int, not a string" in errors[5] and "invalid JSON" in errors[6] and "not an object" in errors[7]
    assert errors[8] == "id field 'id' is missing"


def test_csv_and_tsv_with_header_quotes_and_short_rows(tmp_path):
    csv_path = tmp_path / "in.csv"
    csv_path.write_bytes(b'id,text\n"a","multi\nline, with comma"\nb,plain\nc\n' + b"d,bad \xfe\n")
    records = read(csv_path, id_field="id")
    assert good(records) == [(1, "a", "multi\nline, with comma"), (2, "b", "plain")]
    assert [(r.row, r.id, r.error) for r in records if r.error] == [
        (3, "c", "text field 'text' is missing"),
        (4, "d", "not valid UTF-8"),
    ]
    tsv_path = tmp_path / "in.tsv.gz"
    with gzip.open(tsv_path, "wt", encoding="utf-8") as handle:
        handle.write("body\tx\nfirst\t1\nsecond\t2\n")
    assert good(read(tsv_path, text_field="body")) == [(1, "1", "first"), (2, "2", "second")]


def test_missing_column_is_a_clear_error(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(InputError, match="no column 'text'.*columns: a, b"):
        read(path)


def test_parquet_nulls_ids_and_resume_across_row_groups(tmp_path):
    path = tmp_path / "in.parquet"
    texts = [f"doc {i}" if i != 4 else None for i in range(10)]
    table = pa.table({"text": texts, "key": list(range(100, 110))})
    pq.write_table(table, path, row_group_size=3)
    records = read(path, id_field="key")
    assert [r.id for r in records] == [str(i) for i in range(100, 110)]
    assert [r.row for r in records if r.error] == [5]
    assert [r.row for r in read(path, start_after=(0, 7))] == [8, 9, 10]
    assert count_rows(expand_inputs(path)) == 10


def test_unreadable_gzip_ends_the_file_with_a_bad_row(tmp_path):
    path = tmp_path / "in.txt.gz"
    data = gzip.compress("".join(f"line {i}\n" for i in range(5000)).encode())
    path.write_bytes(data[: len(data) // 2])
    records = read(path)
    assert records[-1].error.startswith("unreadable file") and records[-1].row == len(records)
    assert all(r.error is None for r in records[:-1])


def test_directory_input_prefixes_ids_with_file_names(tmp_path):
    (tmp_path / "b.txt").write_text("b1\nb2\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"text": "a1"}\n', encoding="utf-8")
    (tmp_path / "_skip.txt").write_text("hidden\n", encoding="utf-8")
    records = read(tmp_path)
    assert [(r.file, r.id, r.text) for r in records] == [
        (0, "a.jsonl:1", "a1"),
        (1, "b.txt:1", "b1"),
        (1, "b.txt:2", "b2"),
    ]
    assert [r.text for r in read(tmp_path, start_after=(1, 1))] == ["b2"]
    with pytest.raises(InputError, match="no such file"):
        expand_inputs(tmp_path / "missing.txt")


def test_chunks_have_the_requested_size(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("".join(f"{i}\n" for i in range(10)), encoding="utf-8")
    sizes = [len(c) for c in CorpusReader(expand_inputs(path)).chunks(4)]
    assert sizes == [4, 4, 2]
