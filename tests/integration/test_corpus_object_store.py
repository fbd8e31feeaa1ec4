"""Corpus jobs on a real S3 API (moto in server mode) with the fake encoder: output and input on object storage,
resumes after a crash at each step that differs from a local directory, real processes killed holding the lease,
the lease itself, and one-line errors for bad URIs and credentials."""

from __future__ import annotations

import json
import os
import socket
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from minilm_npu.cli.main import main
from minilm_npu.corpus import job as job_module
from minilm_npu.corpus.directory import open_directory
from minilm_npu.corpus.job import LocalEngine, embed_corpus
from minilm_npu.corpus.lock import LOCK_NAME, Lease
from minilm_npu.corpus.manifest import MANIFEST_NAME, SKIPPED_NAME, Manifest
from minilm_npu.corpus.search import search_vectors
from minilm_npu.corpus.storage import input_path, open_input
from minilm_npu.errors import InputError, OutputError
from tests.fixtures.corpus import BAD, ROWS, FakeEncoder, child, job_settings, write_txt
from tests.fixtures.corpus import GOOD_IDS as GOOD
from tests.fixtures.corpus import read_output as read

from ..s3 import moto_endpoint, s3  # noqa: F401 - fixtures


class Crash(Exception):
    pass


# -- a corpus job on a real S3 API (moto) -----------------------------------------------------------------------
def test_s3_output_matches_local_row_for_row_and_search_reads_it(tmp_path, s3):
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    local = embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), job_settings(keep_text=True))
    remote = embed_corpus(src, s3.uri("runs/out"), LocalEngine(FakeEncoder()), job_settings(keep_text=True))
    assert (remote.rows_written, remote.rows_skipped, remote.shards) == (local.rows_written, 2, local.shards)
    ids, vectors = read(s3.uri("runs/out"))
    local_ids, local_vectors = read(tmp_path / "out")
    assert ids == local_ids == GOOD
    np.testing.assert_array_equal(vectors, local_vectors)
    # The same files, less the lease (released; a local flock file stays, it holds nothing once closed).
    assert s3.keys("runs/out/") == sorted(
        f"runs/out/{name}" for name in os.listdir(tmp_path / "out") if name != LOCK_NAME
    )
    assert s3.get(f"runs/out/{SKIPPED_NAME}") == (tmp_path / "out" / SKIPPED_NAME).read_bytes()
    assert remote.skipped_file == s3.uri(f"runs/out/{SKIPPED_NAME}")
    query = FakeEncoder.vector("text number 7")
    hits = search_vectors(s3.uri("runs/out"), query, k=3)[0]
    assert [(h.id, h.text) for h in hits] == [(h.id, h.text) for h in search_vectors(tmp_path / "out", query, 3)[0]]
    assert hits[0].id == "7"
    again = embed_corpus(src, s3.uri("runs/out"), LocalEngine(FakeEncoder()), job_settings(keep_text=True, verify=True))
    assert again.already_complete and again.verified == local.shards


# The steps where object storage differs from a local directory: a shard's upload not yet made, a shard uploaded
# but not committed, skipped-row lines not yet uploaded, a manifest's upload not yet made (the rest of the commit
# sequence is the same code as locally, tested in test_corpus_reliability.py).
@pytest.mark.parametrize("stage", ["shard-tmp", "after-shard", "skipped-partial", "manifest-tmp"])
def test_s3_resume_after_a_crash_at_each_stage(tmp_path, s3, monkeypatch, stage):
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    out = s3.uri("out")
    monkeypatch.setattr(
        job_module, "_crash_point", lambda at, n: (_ for _ in ()).throw(Crash()) if (at, n) == (stage, 3) else None
    )
    with pytest.raises(Crash):
        embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings())
    monkeypatch.setattr(job_module, "_crash_point", lambda at, n: None)
    if stage in ("after-shard", "skipped-partial"):  # uploaded but not committed: not trusted
        assert "out/part-000003.parquet" in s3.keys()
        assert "part-000003.parquet" not in [s.file for s in Manifest.load(out).shards]
    s3.put("out/part-000042.parquet", b"left by some killed run")
    summary = embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings())
    assert read(out)[0] == GOOD and summary.rows_written == len(GOOD) and summary.rows_skipped == 2
    assert [json.loads(line)["row"] for line in s3.get(f"out/{SKIPPED_NAME}").splitlines()] == sorted(BAD)
    manifest = Manifest.load(out)
    assert s3.keys() == sorted(
        [f"out/{MANIFEST_NAME}", f"out/{SKIPPED_NAME}"] + [f"out/{s.file}" for s in manifest.shards if s.file]
    )


def test_s3_input_directory_reads_like_a_local_one(tmp_path, s3):
    import pyarrow as pa

    (tmp_path / "in").mkdir()
    write_txt(tmp_path / "in" / "a.txt", 5)
    pq.write_table(pa.table({"text": [f"row {i}" for i in range(7)]}), tmp_path / "in" / "b.parquet")
    for name in ("a.txt", "b.parquet"):
        s3.put(f"in/{name}", (tmp_path / "in" / name).read_bytes())
    local = embed_corpus(tmp_path / "in", tmp_path / "out", LocalEngine(FakeEncoder()), job_settings())
    remote = embed_corpus(s3.uri("in/"), tmp_path / "out2", LocalEngine(FakeEncoder()), job_settings())
    assert remote.rows_written == local.rows_written == 12
    assert (
        read(tmp_path / "out2")[0]
        == read(tmp_path / "out")[0]
        == [f"a.txt:{i}" for i in range(1, 6)] + [f"b.parquet:{i}" for i in range(1, 8)]
    )
    np.testing.assert_array_equal(read(tmp_path / "out2")[1], read(tmp_path / "out")[1])
    inputs = Manifest.load(tmp_path / "out2").fingerprint["inputs"]
    assert [i["path"] for i in inputs] == [s3.uri("in/a.txt"), s3.uri("in/b.parquet")]
    with open_input(input_path(s3.uri("in/a.txt"))) as handle:  # like open(path, "rb"): lines, seek, tell
        assert next(iter(handle)) == b"text number 1\n"
        handle.seek(len(b"text number 1\ntext "))
        assert (handle.readline(), handle.tell()) == (b"number 2\n", 28)
    s3.put("in/a.txt", b"changed\n")
    with pytest.raises(InputError, match=r"s3://.*/in/a.txt changed \(size\)"):
        embed_corpus(s3.uri("in"), tmp_path / "out2", LocalEngine(FakeEncoder()), job_settings())


def test_s3_sigkill_mid_commit_then_resume_in_real_processes(tmp_path, s3):
    """Real processes killed (SIGKILL) holding the lease, mid-upload of a shard and mid-upload of a manifest; each
    rerun takes over the dead holder's lease at once (same host) and the last one finishes every row once."""
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    out = s3.uri("killed")
    for crash, rows in (("locked:0", None), ("shard-tmp:1", 4), ("manifest-tmp:3", 8)):
        proc = child(src, out, crash)
        assert proc.returncode == -9, proc.stderr[-2000:]
        manifest = Manifest.load(out)
        assert (manifest.rows_consumed if manifest else None) == rows, crash
        assert f"killed/{LOCK_NAME}" in s3.keys()  # the dead run's lease stays behind
    proc = child(src, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["rows", "19", "skipped", "2", "new", "13"]
    assert read(out)[0] == GOOD
    np.testing.assert_array_equal(
        read(out)[1], np.stack([FakeEncoder.vector(f"text number {i}") for i in map(int, GOOD)])
    )
    listed = [s.file for s in Manifest.load(out).shards if s.file]
    assert s3.keys() == sorted(
        [f"killed/{MANIFEST_NAME}", f"killed/{SKIPPED_NAME}"] + [f"killed/{name}" for name in listed]
    )


# -- the lease ----------------------------------------------------------------------------------------------------
def lease_body(**fields) -> bytes:
    info = {
        "owner": "someone-else",
        "host": "other-host",
        "pid": 4242,
        "started": time.time(),
        "expires": time.time() + 600,
        "command": "minilm-npu embed ...",
    }
    return json.dumps({**info, **fields}).encode()


def test_a_live_lease_refuses_a_second_job_and_a_stale_one_is_taken_over(tmp_path, s3):
    src = write_txt(tmp_path / "in.txt", 6)
    s3.put(f"out/{LOCK_NAME}", lease_body())
    with pytest.raises(OutputError, match=r"being written by another .*pid 4242 on other-host.*expires in"):
        embed_corpus(src, s3.uri("out"), LocalEngine(FakeEncoder()), job_settings())
    assert s3.keys() == [f"out/{LOCK_NAME}"]  # nothing written beside the other job
    s3.put(f"out/{LOCK_NAME}", lease_body(expires=time.time() - 1))  # its holder died a while ago
    assert embed_corpus(src, s3.uri("out"), LocalEngine(FakeEncoder()), job_settings()).rows_written == 6
    # A holder on this host whose process is gone (killed) need not be waited for.
    dead = os.getpid()
    while True:
        dead += 1
        try:
            os.kill(dead, 0)
        except ProcessLookupError:
            break
        except PermissionError:
            continue
    s3.put(f"out2/{LOCK_NAME}", lease_body(host=socket.gethostname(), pid=dead))
    assert embed_corpus(src, s3.uri("out2"), LocalEngine(FakeEncoder()), job_settings()).rows_written == 6
    assert f"out2/{LOCK_NAME}" not in s3.keys()


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def test_lease_is_renewed_and_a_lost_lease_stops_writes(s3):
    directory = open_directory(s3.uri("leased"))
    lease = Lease(directory, s3.uri("leased"), ttl=1.5, settle=0).acquire()  # renewed every 0.5 s
    first = json.loads(s3.get(f"leased/{LOCK_NAME}"))["expires"]
    assert wait_for(lambda: json.loads(s3.get(f"leased/{LOCK_NAME}"))["expires"] > first)  # renewed while held
    with pytest.raises(OutputError, match="being written by another"):
        Lease(open_directory(s3.uri("leased")), "again", ttl=1.5, settle=0).acquire()
    directory.write("ok", lambda sink: sink.write(b"1"))  # the guard lets the holder write
    s3.put(f"leased/{LOCK_NAME}", lease_body())  # someone took it over (e.g. after this process stalled)
    assert wait_for(lambda: lease.lost is not None)
    with pytest.raises(OutputError, match="lost its lease"):
        directory.write("late", lambda sink: sink.write(b"2"))
    assert "leased/late" not in s3.keys()
    lease.release()
    assert f"leased/{LOCK_NAME}" in s3.keys()  # not ours any more: left for its holder


# -- clear one-line errors from the command line --------------------------------------------------------------------
def cli_error(capsys, *args) -> str:
    assert main(["embed", *args, "--no-progress", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_storage_uris_are_one_line_errors(tmp_path, s3, capsys, monkeypatch):
    src = write_txt(tmp_path / "in.txt", 3)
    assert "cannot open this storage URI" in cli_error(capsys, str(src), "-o", "nope://bucket/out")
    assert "bucket 'no-such-bucket' does not exist" in cli_error(capsys, str(src), "-o", "s3://no-such-bucket/out")
    assert "no such file" in cli_error(capsys, s3.uri("missing.txt"), "-o", str(tmp_path / "o"))
    assert "must be a local path" in cli_error(capsys, str(src), "-o", s3.uri("v.npy"))
    from moto import settings as moto_settings

    # moto now checks signatures: credentials it does not know are refused like wrong ones on AWS. (Sending none
    # at all makes moto itself fail with a 500; AWS answers 403 and the message is the same one.)
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    err = cli_error(capsys, str(src), "-o", s3.uri("out"))
    assert "ACCESS_DENIED" in err and "credentials (AWS_ACCESS_KEY_ID" in err
    assert "credentials" in cli_error(capsys, s3.uri("in.txt"), "-o", str(tmp_path / "o"))
