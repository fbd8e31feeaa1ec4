"""Batch files: BOM, CRLF, empty lines kept, bad UTF-8 named by line; vector files in three formats."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from minilm_npu.errors import InputError
from minilm_npu.textio import VectorWriter, count_lines, iter_text_chunks


def test_bom_crlf_and_empty_lines(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xef\xbb\xbffirst\r\n\r\nthird\n\nlast-no-newline")
    chunks = list(iter_text_chunks(path, chunk_size=2))
    assert chunks == [["first", ""], ["third", ""], ["last-no-newline"]]
    assert count_lines(path) == 5


def test_bad_utf8_names_the_line(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"ok\nstill ok\n\xff\xfebad\n")
    with pytest.raises(InputError, match="line 3 is not valid UTF-8"):
        count_lines(path)
    assert list(iter_text_chunks(path, encoding_errors="replace"))[0][2] == "\ufffd\ufffdbad"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="cannot read"):
        count_lines(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="directory"):
        count_lines(tmp_path)


@pytest.mark.parametrize("suffix", [".npy", ".jsonl", ".csv"])
def test_vector_writer_round_trip(tmp_path, suffix):
    vectors = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    path = tmp_path / f"out{suffix}"
    with VectorWriter(path, 5, 4) as writer:
        writer.write(vectors[:2])
        writer.write(vectors[2:])
    if suffix == ".npy":
        back = np.load(path)
    elif suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["index"] for r in rows] == list(range(5))
        back = np.array([r["embedding"] for r in rows], dtype=np.float32)
    else:
        rows = list(csv.reader(path.open()))
        assert rows[0][:2] == ["index", "dim_0"] and len(rows) == 6
        back = np.array([[float(x) for x in r[1:]] for r in rows[1:]], dtype=np.float32)
    np.testing.assert_array_equal(back, vectors)


def test_bad_output_paths(tmp_path):
    with pytest.raises(InputError, match="must end in"):
        VectorWriter.check_path(tmp_path / "out.txt")
    with pytest.raises(InputError, match="does not exist"):
        VectorWriter.check_path(tmp_path / "nope" / "out.npy")
