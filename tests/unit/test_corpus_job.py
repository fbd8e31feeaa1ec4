"""The resumable job with a fake encoder: output layout, exactly-once resume, fingerprints, bad-row policies."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from minilm_npu.corpus import job as job_module
from minilm_npu.corpus.job import EmbedSettings, LocalEngine, embed_corpus
from minilm_npu.corpus.manifest import MANIFEST_NAME, SKIPPED_NAME, Manifest
from minilm_npu.errors import InputError
from tests.fixtures.corpus import FakeEncoder, read_output, write_txt


def settings(**kwargs):
    kwargs.setdefault("shard_rows", 4)
    kwargs.setdefault("progress", False)
    return EmbedSettings(**kwargs)


def test_parquet_output_rows_in_order_with_manifest(tmp_path):
    src = write_txt(tmp_path / "in.txt", 10)
    summary = embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings(keep_text=True))
    assert (summary.rows_written, summary.rows_skipped, summary.shards, summary.new_rows) == (10, 0, 3, 10)
    ids, vectors = read_output(tmp_path / "out")
    assert ids == [str(i) for i in range(1, 11)]
    expected = np.stack([FakeEncoder.vector(f"text number {i}") for i in range(1, 11)])
    np.testing.assert_array_equal(vectors, expected)
    first = pq.read_table(tmp_path / "out" / "part-000000.parquet")
    assert str(first.schema.field("embedding").type) == "fixed_size_list<element: float>[8]"
    assert first.column("text").to_pylist()[0] == "text number 1"
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.complete and manifest.cursor == [0, 10] and manifest.dimension == 8
    assert not (tmp_path / "out" / SKIPPED_NAME).exists()
    again = embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings(keep_text=True))
    assert again.already_complete and again.rows_written == 10


def test_npy_output_and_existing_file(tmp_path):
    src = write_txt(tmp_path / "in.txt", 6)
    out = tmp_path / "vectors.npy"
    embed_corpus(src, out, LocalEngine(FakeEncoder()), settings())
    array = np.load(out)
    assert array.shape == (6, 8) and not (tmp_path / "vectors.npy.partial").exists()
    np.testing.assert_array_equal(array[2], FakeEncoder.vector("text number 3"))
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        embed_corpus(src, out, LocalEngine(FakeEncoder()), settings())
    embed_corpus(src, out, LocalEngine(FakeEncoder()), settings(overwrite=True))
    assert np.load(out).shape == (6, 8)


class Crash(Exception):
    pass


@pytest.mark.parametrize("stage", ["before-shard", "after-shard", "after-manifest"])
def test_resume_after_crash_at_each_stage_writes_every_row_once(tmp_path, monkeypatch, stage):
    src = write_txt(tmp_path / "in.txt", 21, bad={6, 13})

    def crash(at, shard):
        if (at, shard) == (stage, 2):
            raise Crash(at)

    monkeypatch.setattr(job_module, "_crash_point", crash)
    with pytest.raises(Crash):
        embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings(on_error="skip"))
    monkeypatch.setattr(job_module, "_crash_point", lambda at, shard: None)
    if stage == "after-shard":  # the uncommitted shard and skip lines are on disk, the manifest does not list them
        assert (tmp_path / "out" / "part-000002.parquet").exists()
    (tmp_path / "out" / "part-000009.parquet.tmp").write_bytes(b"torn")  # a torn temp file from the crash
    encoder = FakeEncoder()
    summary = embed_corpus(src, tmp_path / "out", LocalEngine(encoder), settings(on_error="skip"))
    # Shards of 4 rows; rows 6 and 13 are bad. Only the good rows after the last commit are embedded again.
    assert encoder.rows == (8 if stage == "after-manifest" else 12)
    ids, vectors = read_output(tmp_path / "out")
    assert ids == [str(i) for i in range(1, 22) if i not in (6, 13)]
    assert summary.rows_written == 19 and summary.rows_skipped == 2
    skipped = [json.loads(line) for line in open(summary.skipped_file, encoding="utf-8")]
    assert [(s["row"], s["id"]) for s in skipped] == [(6, "6"), (13, "13")]
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_changed_input_or_settings_stop_unless_overwrite(tmp_path, monkeypatch):
    src = write_txt(tmp_path / "in.txt", 9)
    monkeypatch.setattr(
        job_module, "_crash_point", lambda at, shard: (_ for _ in ()).throw(Crash()) if shard == 1 else None
    )
    with pytest.raises(Crash):
        embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings())
    monkeypatch.setattr(job_module, "_crash_point", lambda at, shard: None)
    with pytest.raises(InputError, match="setting keep_text changed"):
        embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings(keep_text=True))
    other = FakeEncoder()
    other.model_name = "other/model"
    with pytest.raises(InputError, match="model changed"):
        embed_corpus(src, tmp_path / "out", LocalEngine(other), settings())
    with open(src, "ab") as handle:
        handle.write(b"one more\n")
    with pytest.raises(InputError, match=r"in.txt changed \(size\).*--overwrite"):
        embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings())
    summary = embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings(overwrite=True))
    assert summary.rows_written == 10 and read_output(tmp_path / "out")[0][-1] == "10"


def test_on_error_fail_names_the_row_then_skip_continues(tmp_path):
    src = write_txt(tmp_path / "in.txt", 10, bad={6})
    with pytest.raises(InputError, match=r"in.txt: row 6: not valid UTF-8.*--on-error skip"):
        embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings())
    manifest = Manifest.load(tmp_path / "out")
    assert manifest.cursor == [0, 4] and manifest.rows_written == 4  # nothing past the last good shard
    assert [p.name for p in sorted((tmp_path / "out").glob("part-*"))] == ["part-000000.parquet"]
    summary = embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings(on_error="skip"))
    assert (summary.rows_written, summary.rows_skipped) == (9, 1)
    assert read_output(tmp_path / "out")[0] == [str(i) for i in range(1, 11) if i != 6]


def test_all_bad_shard_and_foreign_output_directory(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(['{"text": null}\n'] * 4 + ['{"text": "fine"}\n']), encoding="utf-8")
    summary = embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings(on_error="skip"))
    assert (summary.rows_written, summary.rows_skipped, summary.shards) == (1, 4, 1)
    assert read_output(tmp_path / "out")[0] == ["5"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(InputError, match="not empty"):
        embed_corpus(src, foreign, LocalEngine(FakeEncoder()), settings(on_error="skip"))
    with pytest.raises(InputError, match="did not write"):
        embed_corpus(src, foreign, LocalEngine(FakeEncoder()), settings(on_error="skip", overwrite=True))
    assert (foreign / "notes.txt").exists()


def test_encoder_factory_is_not_called_when_nothing_to_do(tmp_path):
    src = write_txt(tmp_path / "in.txt", 3)
    embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings())
    engine = LocalEngine(lambda: pytest.fail("model loaded"), model=FakeEncoder.model_name, dtype="float32")
    assert embed_corpus(src, tmp_path / "out", engine, settings()).already_complete


def test_settings_are_validated(tmp_path):
    src = write_txt(tmp_path / "in.txt", 3)
    with pytest.raises(InputError, match="--on-error"):
        embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings(on_error="ignore"))
    with pytest.raises(InputError, match="shard_rows"):
        embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings(shard_rows=0))
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_npy_output_resumes_and_keeps_the_skipped_list(tmp_path, monkeypatch):
    src = write_txt(tmp_path / "in.txt", 9, bad={2})
    out = tmp_path / "v.npy"
    monkeypatch.setattr(
        job_module,
        "_crash_point",
        lambda at, shard: (_ for _ in ()).throw(Crash()) if (at, shard) == ("after-manifest", 1) else None,
    )
    with pytest.raises(Crash):
        embed_corpus(src, out, LocalEngine(FakeEncoder()), settings(on_error="skip"))
    assert not out.exists() and (tmp_path / "v.npy.partial" / MANIFEST_NAME).exists()
    monkeypatch.setattr(job_module, "_crash_point", lambda at, shard: None)
    summary = embed_corpus(src, out, LocalEngine(FakeEncoder()), settings(on_error="skip"))
    expected = np.stack([FakeEncoder.vector(f"text number {i}") for i in range(1, 10) if i != 2])
    np.testing.assert_array_equal(np.load(out), expected)
    assert summary.skipped_file == str(tmp_path / "v.npy.skipped.jsonl")
    assert json.loads(open(summary.skipped_file, encoding="utf-8").read())["row"] == 2
    assert not (tmp_path / "v.npy.partial").exists()


@pytest.mark.parametrize("where", ["output", "input"])
def test_unknown_storage_uri_is_refused_not_made_a_local_folder(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    src = tmp_path / "a.txt"
    src.write_text("one\n", encoding="utf-8")
    args = (str(src), "nope://bucket/out") if where == "output" else ("nope://bucket/in.txt", str(tmp_path / "o"))
    with pytest.raises(InputError, match="nope://bucket/.*cannot open this storage URI.*Unrecognized filesystem"):
        embed_corpus(*args, LocalEngine(FakeEncoder()), EmbedSettings(progress=False))
    assert not (tmp_path / "nope:").exists() and not (tmp_path / "o").exists()
