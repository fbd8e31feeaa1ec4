"""Units of work: the records of all units of a file are exactly the whole-file reader's, and a unit reads only
its own bytes (no Ray here; the Ray engine runs the same reader per unit)."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minilm_npu.corpus import readers, units
from minilm_npu.corpus.inputs import expand_inputs
from minilm_npu.corpus.ray_engine import embed_unit, unit_shard_name
from minilm_npu.corpus.readers import CorpusReader
from minilm_npu.corpus.units import Unit, file_units, line_cuts, plan_units
from tests.fixtures.corpus import FakeEncoder

TXT = (
    b"\xef\xbb\xbfbom first\r\n\xef\xbb\xbfbom again\r\n\n\nbad \xff byte\nplain\r\n\r\n"
    + b"".join(b"line %d\n" % i for i in range(40))
    + b"last without newline"
)
JSONL = (
    b"\xef\xbb\xbf"
    + json.dumps({"text": "first", "id": 1}).encode()
    + b"\r\n\n\n{broken\n"
    + b"".join(json.dumps({"text": f"doc {i}", "id": f"k{i}"}).encode() + b"\n" for i in range(30))
    + b"[1]\n"
    + json.dumps({"text": None}).encode()
    + b"\n\xff\xfe\n\n\n"
    + b'{"text": "end"}'
)


def cuts_of(data: bytes, every: int) -> tuple[list[int], int, int]:
    found = line_cuts(io.BytesIO(data), every)
    cuts = []
    while True:
        try:
            cuts.append(next(found))
        except StopIteration as end:
            return (cuts, *end.value)


def whole_and_units(path, shard_rows, **fields):
    reader = CorpusReader(expand_inputs(path), **fields)
    planned = list(plan_units(reader.files, shard_rows))
    by_unit = [r for unit in planned for r in reader.file_records(unit.file, unit.skip, unit)]
    return list(reader.records()), by_unit, planned


@pytest.mark.parametrize("shard_rows", [1, 2, 3, 5, 7, 16, 1000])
@pytest.mark.parametrize(
    "name,data",
    [
        ("in.txt", TXT),
        ("in.jsonl", JSONL),
        ("crlf.txt", b"a\r\nb\r\n\r\nc\r\n"),
        ("one.txt", b"no newline at all"),
        ("nl.txt", b"\n\n\n"),
    ],
)
def test_units_concatenate_to_the_whole_file(tmp_path, name, data, shard_rows):
    path = tmp_path / name
    path.write_bytes(data)
    fields = {"id_field": "id"} if name.endswith(".jsonl") else {}
    whole, by_unit, planned = whole_and_units(path, shard_rows, **fields)
    assert by_unit == whole and whole
    assert all(u.kind == "lines" for u in planned)
    # Units tile the file: contiguous bytes, contiguous row ranges, each at most shard_rows lines.
    assert planned[0].start == 0 and planned[-1].stop == len(data)
    for before, after in zip(planned, planned[1:]):
        assert before.stop == after.start and before.hi == after.lo
        assert data[after.start - 1 : after.start] == b"\n"  # a cut follows a newline
    assert all(0 < u.hi - u.lo <= shard_rows for u in planned)


def test_random_files_and_every_cut_width(tmp_path):
    rng = random.Random(7)
    pieces = [b"", b"x", b"\r", b"\xff", "é".encode(), b"\xef\xbb\xbf", b"word word"]
    for trial in range(25):
        body = b"".join(rng.choice(pieces) + (b"\n" if rng.random() < 0.5 else b"") for _ in range(rng.randint(0, 60)))
        path = tmp_path / f"r{trial}.txt"
        path.write_bytes(body)
        for shard_rows in (1, 2, 3, 11):
            whole, by_unit, _ = whole_and_units(path, shard_rows)
            assert by_unit == whole, (body, shard_rows)


@pytest.mark.parametrize("block", [1, 2, 3, 4, 64])
def test_line_cuts_land_just_after_newlines_whatever_the_block_size(monkeypatch, block):
    monkeypatch.setattr(units, "BLOCK_BYTES", block)
    data = b"a\nbb\n\nccc\nd"
    assert cuts_of(data, 1) == ([2, 5, 6, 10], 5, 11)
    assert cuts_of(data, 2) == ([5, 10], 5, 11)
    assert cuts_of(b"a\nb\n", 2) == ([4], 2, 4)  # a cut at the very end: the file's end
    assert cuts_of(b"a\nb\n", 1) == ([2, 4], 2, 4)
    assert cuts_of(b"", 3) == ([], 0, 0)
    assert cuts_of(b"\n\n\n", 5) == ([], 3, 3)


def test_parquet_units_are_row_group_ranges(tmp_path):
    path = tmp_path / "in.parquet"
    texts = [f"row {i}" if i % 9 else None for i in range(1, 48)]
    pq.write_table(pa.table({"text": texts, "key": [f"k{i}" for i in range(47)]}), path, row_group_size=10)
    for shard_rows in (1, 10, 15, 100):
        whole, by_unit, planned = whole_and_units(path, shard_rows, id_field="key")
        assert by_unit == whole and len(whole) == 47
        assert all(u.kind == "groups" for u in planned)
        assert [u.lo for u in planned] == {1: [0, 10, 20, 30, 40], 10: [0, 10, 20, 30, 40], 15: [0, 20, 40], 100: [0]}[
            shard_rows
        ]
        assert planned[-1].hi == 47


def test_csv_and_gzip_are_one_unit_per_file(tmp_path):
    import gzip

    (tmp_path / "a.csv").write_text('text\n"multi\nline"\nplain\n', encoding="utf-8")
    with gzip.open(tmp_path / "b.txt.gz", "wb") as handle:
        handle.write(b"".join(b"g%d\n" % i for i in range(50)))
    files = expand_inputs(tmp_path)
    assert list(plan_units(files, 4)) == [Unit(0, "file"), Unit(1, "file")]
    assert list(plan_units(files, 4, start_after=(1, 20))) == [Unit(1, "file", skip=20)]


def test_plan_resumes_after_a_cursor(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"".join(b"%d\n" % i for i in range(1, 26)))
    files = expand_inputs(path)
    assert [(u.lo, u.hi, u.skip) for u in plan_units(files, 10)] == [(0, 10, 0), (10, 20, 10), (20, 25, 20)]
    assert [(u.lo, u.skip) for u in plan_units(files, 10, start_after=(0, 10))] == [(10, 10), (20, 20)]
    # A cursor inside a unit (a job started by the local engine): the unit is kept, skipping up to the cursor.
    resumed = list(plan_units(files, 10, start_after=(0, 13)))
    assert [(u.lo, u.skip) for u in resumed] == [(10, 13), (20, 20)]
    reader = CorpusReader(files)
    assert [r.row for r in reader.file_records(0, resumed[0].skip, resumed[0])] == list(range(14, 21))
    assert list(plan_units(files, 10, start_after=(0, 25))) == []


class CountingFile(io.FileIO):
    """A file that records every range of bytes read from it."""

    reads: list[tuple[int, int]] = []

    def read(self, size=-1):
        at = self.tell()
        data = super().read(size)
        CountingFile.reads.append((at, at + len(data)))
        return data

    def readinto(self, buffer):
        at = self.tell()
        count = super().readinto(buffer)
        CountingFile.reads.append((at, at + (count or 0)))
        return count


def test_a_unit_reads_only_its_own_bytes(tmp_path, monkeypatch):
    path = tmp_path / "big.txt"
    path.write_bytes(b"".join(b"sentence number %d\n" % i for i in range(1, 1001)))
    files = expand_inputs(path)
    planned = list(plan_units(files, 100))
    assert len(planned) == 10
    monkeypatch.setattr(readers, "open_input", lambda path: CountingFile(path, "r"))
    reader = CorpusReader(files)
    for unit in planned:
        CountingFile.reads = []
        rows = [r.row for r in reader.file_records(unit.file, unit.skip, unit)]
        assert rows == list(range(unit.lo + 1, unit.hi + 1))
        assert CountingFile.reads == [(unit.start, unit.stop)], unit  # one read, exactly the unit's range


def test_embed_unit_writes_one_shard_per_unit_and_splits_long_units(tmp_path):
    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"text": f"t{i}"}) for i in range(1, 31)]
    lines[4:16] = [""] * 12  # rows 5-16 are blank lines: a whole shard's range holds no row
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    reader = CorpusReader(expand_inputs(path))
    out = tmp_path / "out"
    out.mkdir()
    whole = Unit(0, "file")
    reports = embed_unit(FakeEncoder(), reader, out, whole, 5, None, False)
    assert [(r.lo, r.hi, r.rows, r.name) for r in reports] == [
        (0, 5, 4, unit_shard_name(0, 0)),
        (15, 20, 4, unit_shard_name(0, 15)),
        (20, 25, 5, unit_shard_name(0, 20)),
        (25, 30, 5, unit_shard_name(0, 25)),
    ]
    assert reports[-1].eof and reports[-1].last == 30 and not any(r.eof for r in reports[:-1])
    rows = [r.row for r in reader.records() if r.error is None]
    written = pq.read_table(out / unit_shard_name(0, 15)).column("id").to_pylist()
    assert written == [str(r) for r in rows if 15 < r <= 20]
    # Planned line units of the same width are exactly one shard each, with the same names.
    planned = [
        r
        for unit in file_units(0, reader.files[0], 5)
        for r in embed_unit(FakeEncoder(), reader, out, unit, 5, None, False)
    ]
    assert [(r.lo, r.rows, r.name) for r in planned] == [(r.lo, r.rows, r.name) for r in reports]
    assert np.all([not r.eof for r in planned])


def test_resume_plans_from_the_recorded_byte_offset_without_rescanning(tmp_path, monkeypatch):
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        b"".join(json.dumps({"text": f"t{i}"}).encode() + (b"\n\n" if i % 4 else b"\r\n") for i in range(1, 60))
        + b'{"text": "last"}'
    )
    files = expand_inputs(path)
    full = list(plan_units(files, 10))
    cursor_unit = full[3]
    monkeypatch.setattr(units, "open_input", lambda path: CountingFile(path, "r"))
    CountingFile.reads = []
    resumed = list(plan_units(files, 10, start_after=(0, cursor_unit.hi), offset=cursor_unit.stop))
    assert resumed == full[4:]
    assert min(start for start, _ in CountingFile.reads) == cursor_unit.stop  # nothing before the offset is read
    assert list(plan_units(files, 10, start_after=(0, full[-1].hi), offset=full[-1].stop)) == []


def test_embed_unit_stops_after_the_first_bad_shard_in_fail_mode(tmp_path):
    import gzip

    path = tmp_path / "in.txt.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"".join(b"t%d\n" % i if i != 7 else b"\xff\n" for i in range(1, 21)))
    reader = CorpusReader(expand_inputs(path))
    out = tmp_path / "out"
    out.mkdir()
    reports = embed_unit(FakeEncoder(), reader, out, Unit(0, "file"), 5, None, False, stop_at_bad=True)
    assert [(r.lo, r.rows, [b.row for b in r.bad]) for r in reports] == [(0, 5, []), (5, 4, [7])]
    assert sorted(p.name for p in out.iterdir()) == [unit_shard_name(0, 0), unit_shard_name(0, 5)]
    everything = embed_unit(FakeEncoder(), reader, out, Unit(0, "file"), 5, None, False)
    assert [r.lo for r in everything] == [0, 5, 10, 15] and everything[-1].eof
