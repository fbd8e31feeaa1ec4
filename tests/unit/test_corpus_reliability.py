"""Crash safety, one writer, verified shards and full disks, in-process with the fake encoder.

Each step of the commit sequence is hit with an exception (cheap, and it shows which files each step leaves
behind); the same steps with real processes killed by SIGKILL are in ``tests/integration/test_corpus_kill.py``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from minilm_npu.corpus import job as job_module
from minilm_npu.corpus import writer as writer_module
from minilm_npu.corpus.job import CRASH_STAGES, LocalEngine, embed_corpus
from minilm_npu.corpus.lock import LOCK_NAME, OutputLock
from minilm_npu.corpus.manifest import Manifest
from minilm_npu.corpus.search import search_vectors
from minilm_npu.errors import InputError, OutputError
from minilm_npu.modelfiles import sha256_of
from tests.fixtures.corpus import BAD, ROWS, FakeEncoder, assert_whole, expected_vectors, job_settings, write_txt


class Crash(Exception):
    pass


@pytest.mark.parametrize("stage", CRASH_STAGES)
def test_injected_crash_at_each_step_leaves_a_resumable_output(tmp_path, monkeypatch, stage):
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    npy = stage.startswith("npy")
    out = tmp_path / ("v.npy" if npy else "out")
    at = 0 if stage in ("locked", "npy-written", "npy-moved") else 3 if stage == "manifest-tmp" else 1

    def crash(where, index):
        if (where, index) == (stage, at):
            raise Crash(stage)

    monkeypatch.setattr(job_module, "_crash_point", crash)
    with pytest.raises(Crash):
        embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings())
    monkeypatch.undo()
    work = tmp_path / "v.npy.partial" if npy else out
    if stage == "locked":
        assert sorted(p.name for p in work.iterdir()) == [LOCK_NAME]  # nothing but the lock
    encoder = FakeEncoder()
    summary = embed_corpus(src, out, LocalEngine(encoder), job_settings())
    assert (summary.rows_written, summary.rows_skipped) == (19, 2)
    if npy:
        np.testing.assert_array_equal(np.load(out), expected_vectors())
    else:
        assert_whole(out)
        committed_before = {"locked": 0, "manifest-tmp": 8, "after-manifest": 8}.get(stage, 4)
        assert encoder.rows == 19 - (committed_before - (1 if committed_before >= 8 else 0))


class ProbingEngine(LocalEngine):
    """Any engine (Ray's too): the job, not the engine, holds the lock while the engine streams."""

    def stream(self, reader, settings, start_after):
        import fcntl

        fd = os.open(self.lock_path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        self.probed = True
        yield from super().stream(reader, settings, start_after)


def test_lock_is_held_by_the_job_for_any_engine(tmp_path):
    src = write_txt(tmp_path / "in.txt", 5)
    (tmp_path / "out").mkdir()
    with OutputLock(tmp_path / "out" / LOCK_NAME, tmp_path / "out"):
        with pytest.raises(OutputError, match=f"pid {os.getpid()} on"):
            embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), job_settings())
    engine = ProbingEngine(FakeEncoder())
    engine.lock_path = tmp_path / "out" / LOCK_NAME
    assert embed_corpus(src, tmp_path / "out", engine, job_settings()).rows_written == 5 and engine.probed


def damage(path: Path, how: str):
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "delete":
        path.unlink()
    else:  # one flipped byte in the data pages: same size, footer intact
        path.write_bytes(data[:40] + bytes([data[40] ^ 0xFF]) + data[41:])


@pytest.mark.parametrize("how", ["truncate", "delete", "flip"])
def test_damaged_shard_is_named_and_only_it_is_embedded_again(tmp_path, how):
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    out = tmp_path / "out"
    embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings(keep_text=True))
    entry = Manifest.load(out).shards[1]
    assert entry.bytes == (out / entry.file).stat().st_size
    assert entry.sha256 == sha256_of(out / entry.file)
    damage(out / "part-000001.parquet", how)
    if how != "flip":  # search reads the manifest's sizes and footers: it names the shard and the remedy
        with pytest.raises(
            InputError,
            match=r"part-000001.parquet: damaged shard .*rerun the same `minilm-npu "
            r"embed` command",
        ):
            search_vectors(out, FakeEncoder.vector("text number 3"))
    encoder = FakeEncoder()
    summary = embed_corpus(src, out, LocalEngine(encoder), job_settings(keep_text=True))
    if how == "flip":  # the cheap check cannot see it; --verify reads the checksums
        assert summary.already_complete and encoder.rows == 0
        summary = embed_corpus(src, out, LocalEngine(encoder), job_settings(keep_text=True, verify=True))
        assert "checksum" in summary.repaired[0] and summary.verified == 6
    assert [r.split(":")[0] for r in summary.repaired] == ["part-000001.parquet"]
    assert encoder.rows == 3 and not summary.already_complete  # shard 1: rows 5-8, row 6 bad
    assert_whole(out)
    assert pq.read_table(out / "part-000001.parquet").column("text").to_pylist()[0] == "text number 5"
    assert embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings(keep_text=True, verify=True)).repaired == []
    assert search_vectors(out, FakeEncoder.vector("text number 7"), k=1)[0][0].id == "7"


def test_damaged_shard_of_an_unfinished_job_is_embedded_again_before_continuing(tmp_path, monkeypatch):
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    out = tmp_path / "out"
    monkeypatch.setattr(
        job_module,
        "_crash_point",
        lambda at, n: (_ for _ in ()).throw(Crash()) if (at, n) == ("before-shard", 3) else None,
    )
    with pytest.raises(Crash):
        embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings())
    monkeypatch.undo()
    damage(out / "part-000000.parquet", "truncate")
    encoder = FakeEncoder()
    summary = embed_corpus(src, out, LocalEngine(encoder), job_settings())
    assert [r.split(":")[0] for r in summary.repaired] == ["part-000000.parquet"]
    assert encoder.rows == 4 + 19 - 11  # shard 0 again, then the good rows after the three committed shards
    assert_whole(out)


def fill_disk_after(monkeypatch, writes: int):
    """From now on, every shard or manifest write fails with ENOSPC after ``writes`` more successful ones."""
    real = writer_module.HashingSink.write
    left = {"n": writes}

    def write(self, data):
        left["n"] -= 1
        if left["n"] < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(writer_module.HashingSink, "write", write)


@pytest.mark.parametrize("where", ["shard", "manifest"])
def test_disk_full_while_writing_is_a_clear_error_and_the_rerun_completes(tmp_path, monkeypatch, where):
    from minilm_npu.corpus import manifest as manifest_module

    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    out = tmp_path / "out"
    if where == "shard":  # the third shard runs out of space part-way through pyarrow's writes
        real_shard = job_module.write_records

        def write_records(directory, index, *args, **kwargs):
            if index == 2:
                fill_disk_after(monkeypatch, 2)
            return real_shard(directory, index, *args, **kwargs)

        monkeypatch.setattr(job_module, "write_records", write_records)
    else:  # the manifest that would commit the third shard (the job's first manifest is write number 1)
        real_json = manifest_module.write_json_atomic
        calls = {"n": 0}

        def write_json(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 4:
                fill_disk_after(monkeypatch, 0)
            return real_json(*args, **kwargs)

        monkeypatch.setattr(manifest_module, "write_json_atomic", write_json)
    with pytest.raises(
        OutputError,
        match=r"cannot write .*No space left on device; the 8 rows committed so far "
        r"are kept; free space .*rerun the same command",
    ):
        embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings())
    monkeypatch.undo()
    manifest = Manifest.load(out)
    assert manifest.rows_consumed == 8 and [s.file for s in manifest.shards] == [
        "part-000000.parquet",
        "part-000001.parquet",
    ]
    assert not list(out.glob("*.tmp"))  # the failed write's temporary file is gone (its space is free again)
    summary = embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings())
    assert summary.new_rows == 13 and not summary.repaired
    assert_whole(out)


def test_unwritable_output_fails_before_the_model_loads(tmp_path):
    src = write_txt(tmp_path / "in.txt", 5)
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    engine = LocalEngine(lambda: pytest.fail("model loaded"), model=FakeEncoder.model_name, dtype="float32")
    with pytest.raises(OutputError, match=r"cannot write .*afile/out: Not a directory"):
        embed_corpus(src, tmp_path / "afile" / "out", engine, job_settings())
    if os.geteuid() != 0:  # root writes into read-only directories anyway
        readonly = tmp_path / "ro"
        readonly.mkdir(mode=0o555)
        with pytest.raises(OutputError, match="Permission denied"):
            embed_corpus(src, readonly / "out", engine, job_settings())
