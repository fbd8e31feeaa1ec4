"""One commit path: the shards the job writes from an engine's vectors and the shards an engine's workers write
themselves (Ray's way) are committed the same way: same rows, same skipped-rows file, same fail message, same
manifest entries (but for the range a worker records), and the same crash points."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minilm_npu.corpus import job as job_module
from minilm_npu.corpus.directory import open_directory
from minilm_npu.corpus.engines import ShardWriter
from minilm_npu.corpus.job import LocalEngine, embed_corpus
from minilm_npu.corpus.manifest import MANIFEST_NAME, SKIPPED_NAME, ShardEntry
from minilm_npu.corpus.ray_engine import ShardReport, embed_unit
from minilm_npu.corpus.units import plan_units
from minilm_npu.errors import InputError
from tests.fixtures.corpus import BAD, ROWS, FakeEncoder, assert_whole, job_settings, read_output, write_txt


class InProcessShardWriter(LocalEngine, ShardWriter):
    """Ray's way without Ray: every unit read, embedded and written by ``embed_unit`` as an actor runs it."""

    def write_shards(self, reader, settings, start_after, output, offset=None):
        directory = open_directory(output)
        for unit in plan_units(reader.files, settings.shard_rows, start_after, offset):
            args = (settings.shard_rows, settings.batch_size, settings.keep_text, settings.on_error == "fail")
            for report in embed_unit(self.encoder, reader, directory, unit, *args):
                yield report.written()


def raw_entries(out) -> list[dict]:
    return json.loads((out / MANIFEST_NAME).read_text(encoding="utf-8"))["shards"]


def test_written_and_streamed_shards_commit_the_same_output(tmp_path):
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    local = embed_corpus(src, tmp_path / "local", LocalEngine(FakeEncoder()), job_settings(keep_text=True))
    writer = embed_corpus(src, tmp_path / "writer", InProcessShardWriter(FakeEncoder()), job_settings(keep_text=True))
    assert (writer.rows_written, writer.rows_skipped) == (local.rows_written, local.rows_skipped) == (19, 2)
    assert_whole(tmp_path / "writer")
    ids, vectors = read_output(tmp_path / "writer")
    local_ids, local_vectors = read_output(tmp_path / "local")
    assert ids == local_ids
    np.testing.assert_array_equal(vectors, local_vectors)
    skipped = (tmp_path / "writer" / SKIPPED_NAME).read_bytes()
    assert skipped == (tmp_path / "local" / SKIPPED_NAME).read_bytes()  # the one place that writes the lines
    # The manifest's JSON: the same keys, in the same order, as before entries were typed.
    assert [list(e) for e in raw_entries(tmp_path / "local")] == [
        ["file", "rows", "skipped", "end", "bytes", "sha256"]
    ] * 6
    ray_keys = ["file", "rows", "skipped", "start", "end", "input_bytes", "bytes", "sha256"]
    assert [list(e) for e in raw_entries(tmp_path / "writer")] == [ray_keys] * 6


def test_entries_read_back_as_written():
    report = ShardReport(file=0, lo=4, hi=8, last=8, bad=[], input_bytes=(10, 20), name="part-x.parquet", rows=3)
    entry = report.written().entry
    assert entry == ShardEntry.from_dict(json.loads(json.dumps(entry.to_dict())))
    assert entry.to_dict() == {
        "file": "part-x.parquet",
        "rows": 3,
        "skipped": 0,
        "start": [0, 4],
        "end": [0, 8],
        "input_bytes": [10, 20],
        "bytes": 0,
        "sha256": "",
    }
    all_bad = ShardEntry(file=None, rows=0, skipped=4, end=[0, 4])
    assert all_bad.to_dict() == {"file": None, "rows": 0, "skipped": 4, "end": [0, 4]}


def test_fail_mode_names_the_same_row_either_way(tmp_path):
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    messages = []
    for name, engine in (("local", LocalEngine(FakeEncoder())), ("writer", InProcessShardWriter(FakeEncoder()))):
        with pytest.raises(InputError) as info:
            embed_corpus(src, tmp_path / name, engine, job_settings(on_error="fail"))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith(f"{src}: row 6: not valid UTF-8") and "--on-error skip" in messages[0]


class Crash(Exception):
    pass


@pytest.mark.parametrize("stage", ["after-shard", "skipped-partial", "after-skipped", "manifest-tmp"])
def test_a_crash_while_committing_a_written_shard_resumes_exactly_once(tmp_path, monkeypatch, stage):
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    at = 2 if stage == "manifest-tmp" else 1  # shard 1 holds a bad row; manifest N counts the shards it lists

    def crash(where, index):
        if (where, index) == (stage, at):
            raise Crash(stage)

    monkeypatch.setattr(job_module, "_crash_point", crash)
    with pytest.raises(Crash):
        embed_corpus(src, tmp_path / "out", InProcessShardWriter(FakeEncoder()), job_settings())
    monkeypatch.undo()
    summary = embed_corpus(src, tmp_path / "out", InProcessShardWriter(FakeEncoder()), job_settings())
    assert (summary.rows_written, summary.rows_skipped) == (19, 2)
    assert_whole(tmp_path / "out")  # every row once; a torn skipped line cut away
    listed = {e["file"] for e in raw_entries(tmp_path / "out") if e["file"]}
    assert {p.name for p in (tmp_path / "out").glob("part-*")} == listed  # the uncommitted shard deleted
