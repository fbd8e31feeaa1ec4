"""The shared text/vector layer: line rules and decoding policies (pinned once here, for ``encode`` and
``embed``), batch files with empty lines kept and bad UTF-8 named by line, vector files in three formats."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from minilm_npu.corpus.inputs import expand_inputs
from minilm_npu.corpus.readers import CorpusReader
from minilm_npu.errors import InputError
from minilm_npu.textio import VectorWriter, count_lines, decode_line, iter_text_chunks, split_lines

# BOM then CRLF, a BOM on line 2 (text, not a marker), a lone CR inside a line, an empty CRLF line, a bad byte, and
# a last line ending in a lone CR with no LF (a lone CR never ends a line, even at the end of the file).
RULES_INPUT = b"\xef\xbb\xbffirst\r\n\xef\xbb\xbfsecond\nin\rside\n\r\nbad \xff byte\nlast\r"
RULES_LINES = [
    (1, b"first"),
    (2, b"\xef\xbb\xbfsecond"),
    (3, b"in\rside"),
    (4, b""),
    (5, b"bad \xff byte"),
    (6, b"last\r"),
]


def test_split_lines_bom_only_on_line_one_crlf_and_lone_cr(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(RULES_INPUT)
    with open(path, "rb") as handle:
        assert list(split_lines(handle)) == RULES_LINES
    assert list(split_lines([b"\n", b"\r\n", b"x"])) == [(1, b""), (2, b""), (3, b"x")]
    assert list(split_lines([])) == []


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("replace", ("bad \ufffd byte", None)),
        ("report", (None, "not valid UTF-8 (byte 4)")),
    ],
)
def test_decode_policies_on_a_bad_line(policy, expected):
    assert decode_line(b"bad \xff byte", 5, policy) == expected
    assert decode_line("caf\u00e9".encode(), 5, policy) == ("caf\u00e9", None)


def test_decode_strict_names_the_line_and_byte():
    with pytest.raises(
        InputError,
        match=r"line 5 is not valid UTF-8 \(byte 5: b'\\xff'\); fix the file or pass "
        r"--encoding-errors replace",
    ):
        decode_line(b"bad \xff byte", 5, "strict")
    assert decode_line(b"fine", 1) == ("fine", None)


def test_encode_and_embed_read_one_file_the_same_way(tmp_path):
    """Both commands go through the shared layer: same texts per line, and only their bad-line policy differs."""
    path = tmp_path / "in.txt"
    path.write_bytes(RULES_INPUT)
    texts = [text for chunk in iter_text_chunks(path, encoding_errors="replace") for text in chunk]
    records = list(CorpusReader(expand_inputs(path)).records())
    assert [r.row for r in records] == list(range(1, 7)) and count_lines(path, "replace") == 6
    for record, text in zip(records, texts):
        if record.error is None:
            assert record.text == text
        else:
            assert (record.row, record.error, text) == (5, "not valid UTF-8 (byte 4)", "bad \ufffd byte")
    assert texts[1] == "\ufeffsecond" and texts[2] == "in\rside" and texts[5] == "last\r"
    with pytest.raises(InputError, match="line 5 is not valid UTF-8"):
        count_lines(path)


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


def test_vector_writer_format_for_a_temporary_name(tmp_path):
    vectors = np.arange(6, dtype=np.float32).reshape(3, 2)
    with VectorWriter(tmp_path / "out.npy.tmp", 3, 2, fmt=".npy") as writer:
        writer.write(vectors)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy.tmp"), vectors)
    with pytest.raises(ValueError, match="fmt must be one of"):
        VectorWriter(tmp_path / "out.bin", 3, 2, fmt=".bin")


def test_bad_output_paths(tmp_path):
    with pytest.raises(InputError, match="must end in"):
        VectorWriter.check_path(tmp_path / "out.txt")
    with pytest.raises(InputError, match="does not exist"):
        VectorWriter.check_path(tmp_path / "nope" / "out.npy")
