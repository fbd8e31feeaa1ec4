"""Crash safety, one writer, verified shards and full disks, with the fake encoder (real processes where it is
about processes).

The kill matrix runs the job in forked processes and SIGKILLs each at the next step of the commit sequence, one
after another on the same output, so each run resumes what the previous kill left; the last run
(``tests.unit.corpus_child``, a program of its own) must leave every input row exactly once, in order. The same
steps are also hit in-process with an exception (cheap, and it shows which files each step leaves behind).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from minilm_npu.corpus import job as job_module
from minilm_npu.corpus import writer as writer_module
from minilm_npu.corpus.job import CRASH_ENV, CRASH_STAGES, EmbedSettings, LocalEngine, embed_corpus
from minilm_npu.corpus.lock import LOCK_NAME, OutputLock
from minilm_npu.corpus.manifest import MANIFEST_NAME, SKIPPED_NAME, Manifest
from minilm_npu.corpus.search import search_vectors
from minilm_npu.errors import InputError, OutputError
from minilm_npu.modelfiles import sha256_of

from .test_corpus_fakes import FakeEncoder
from .test_corpus_job import read_output, write_txt

ROOT = Path(__file__).resolve().parents[2]
ROWS, BAD = 21, {6, 13}  # shards of 4 rows: shards 1 and 3 each hold one bad row
GOOD_IDS = [str(i) for i in range(1, ROWS + 1) if i not in BAD]


def settings(**kwargs):
    return EmbedSettings(**{"shard_rows": 4, "on_error": "skip", "progress": False, **kwargs})


def expected_vectors():
    return np.stack([FakeEncoder.vector(f"text number {i}") for i in map(int, GOOD_IDS)])


def assert_whole(out: Path, skipped_file: Path | None = None):
    """Every good row once, in order, with its own vector; the skipped rows listed once each; no leftovers."""
    ids, vectors = read_output(out)
    assert ids == GOOD_IDS
    np.testing.assert_array_equal(vectors, expected_vectors())
    skipped = skipped_file or out / SKIPPED_NAME
    assert [json.loads(line)["row"] for line in skipped.read_text(encoding="utf-8").splitlines()] == sorted(BAD)
    assert not list(out.glob("*.tmp"))


def child(src, out, crash=None, gate=None, **popen):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    cmd = [sys.executable, "-m", "tests.unit.corpus_child", str(src), str(out)] + ([str(gate)] if gate else [])
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def forked(crash: str | None, fn) -> int:
    """Run ``fn`` in a forked copy of this process (a real process, without the cost of importing torch again)
    with the fault-injection variable set; returns its exit code (-9 when it SIGKILLed itself)."""
    with warnings.catch_warnings():  # Python 3.12+ warns about forking a threaded process; the child runs
        warnings.simplefilter("ignore", DeprecationWarning)  # only the job (numpy, pyarrow), never torch
        pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            if crash:
                os.environ[CRASH_ENV] = crash
            fn()
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the job killed at {crash} did not finish")


def committed(out: Path) -> int:
    return Manifest.load(out).rows_consumed if (out / MANIFEST_NAME).exists() else -1


# The commit sequence of the first two shards (shard 1 holds a bad row, so the side file is written), in the
# order one run passes them; a kill at each, one after another, must never lose or repeat a row.
KILLS = [
    ("locked:0", -1),
    ("manifest-tmp:0", -1),
    ("before-shard:0", 0),
    ("shard-tmp:0", 0),
    ("after-shard:0", 0),
    ("manifest-tmp:1", 0),
    ("after-manifest:0", 4),
    ("shard-tmp:1", 4),
    ("after-shard:1", 4),
    ("skipped-partial:1", 4),
    ("after-skipped:1", 4),
    ("manifest-tmp:2", 4),
    ("after-manifest:1", 8),
]


def test_sigkill_at_every_commit_step_then_resume_keeps_every_row_once(tmp_path):
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    out = tmp_path / "out"
    assert {stage.split(":")[0] for stage, _ in KILLS} == set(CRASH_STAGES) - {"npy-written", "npy-moved"}
    for crash, rows in KILLS:
        assert (
            forked(crash, lambda: embed_corpus(src, out, LocalEngine(FakeEncoder()), settings())) == -signal.SIGKILL
        ), crash
        assert committed(out) == rows, crash  # -1: no manifest yet (killed holding only the lock)
    # The last resume as its own program (the same as `minilm-npu embed`, with the fake encoder).
    proc = child(src, out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["rows", "19", "skipped", "2", "new", "13"]
    assert_whole(out)


def test_sigkill_while_npy_output_is_finished(tmp_path):
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    out = tmp_path / "v.npy"
    for crash in ("npy-written:0", "npy-moved:0"):
        assert forked(crash, lambda: embed_corpus(src, out, LocalEngine(FakeEncoder()), settings())) == -signal.SIGKILL
        assert out.exists() and (tmp_path / "v.npy.partial" / MANIFEST_NAME).exists()
    embed_corpus(src, out, LocalEngine(FakeEncoder()), settings())
    np.testing.assert_array_equal(np.load(out), expected_vectors())
    assert [json.loads(line)["row"] for line in open(tmp_path / "v.npy.skipped.jsonl", encoding="utf-8")] == [6, 13]
    assert not (tmp_path / "v.npy.partial").exists() and not list(tmp_path.glob("*.tmp"))


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
        embed_corpus(src, out, LocalEngine(FakeEncoder()), settings())
    monkeypatch.undo()
    work = tmp_path / "v.npy.partial" if npy else out
    if stage == "locked":
        assert sorted(p.name for p in work.iterdir()) == [LOCK_NAME]  # nothing but the lock
    encoder = FakeEncoder()
    summary = embed_corpus(src, out, LocalEngine(encoder), settings())
    assert (summary.rows_written, summary.rows_skipped) == (19, 2)
    if npy:
        np.testing.assert_array_equal(np.load(out), expected_vectors())
    else:
        assert_whole(out)
        committed_before = {"locked": 0, "manifest-tmp": 8, "after-manifest": 8}.get(stage, 4)
        assert encoder.rows == 19 - (committed_before - (1 if committed_before >= 8 else 0))


def test_second_writer_stops_at_once_naming_the_first(tmp_path):
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    out, gate = tmp_path / "out", tmp_path / "go"
    first = child(src, out, gate=gate, popen=True)
    try:
        deadline = time.monotonic() + 60
        while not ((out / LOCK_NAME).exists() and (out / LOCK_NAME).read_text()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None
        # The real command, started while the first job holds the output: stops before loading any model.
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
        second = subprocess.run(
            [sys.executable, "-m", "minilm_npu.cli.main", "embed", str(src), "-o", str(out), "--device", "cpu"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2
        assert f"being written by another `minilm-npu embed` (pid {first.pid} on " in second.stderr
        assert "Traceback" not in second.stderr
        gate.touch()
        assert first.wait(timeout=60) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert_whole(out)


def test_lock_of_a_killed_job_never_blocks(tmp_path):
    src = write_txt(tmp_path / "in.txt", ROWS, bad=BAD)
    out, gate = tmp_path / "out", tmp_path / "go"
    holder = child(src, out, gate=gate, popen=True)
    deadline = time.monotonic() + 60
    while committed(out) < 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(OutputError, match=f"pid {holder.pid}"):
        embed_corpus(src, out, LocalEngine(FakeEncoder()), settings())
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    embed_corpus(src, out, LocalEngine(FakeEncoder()), settings())
    assert_whole(out)


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
            embed_corpus(src, tmp_path / "out", LocalEngine(FakeEncoder()), settings())
    engine = ProbingEngine(FakeEncoder())
    engine.lock_path = tmp_path / "out" / LOCK_NAME
    assert embed_corpus(src, tmp_path / "out", engine, settings()).rows_written == 5 and engine.probed


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
    embed_corpus(src, out, LocalEngine(FakeEncoder()), settings(keep_text=True))
    entry = Manifest.load(out).shards[1]
    assert entry["bytes"] == (out / entry["file"]).stat().st_size
    assert entry["sha256"] == sha256_of(out / entry["file"])
    damage(out / "part-000001.parquet", how)
    if how != "flip":  # search reads the manifest's sizes and footers: it names the shard and the remedy
        with pytest.raises(
            InputError,
            match=r"part-000001.parquet: damaged shard .*rerun the same `minilm-npu "
            r"embed` command",
        ):
            search_vectors(out, FakeEncoder.vector("text number 3"))
    encoder = FakeEncoder()
    summary = embed_corpus(src, out, LocalEngine(encoder), settings(keep_text=True))
    if how == "flip":  # the cheap check cannot see it; --verify reads the checksums
        assert summary.already_complete and encoder.rows == 0
        summary = embed_corpus(src, out, LocalEngine(encoder), settings(keep_text=True, verify=True))
        assert "checksum" in summary.repaired[0] and summary.verified == 6
    assert [r.split(":")[0] for r in summary.repaired] == ["part-000001.parquet"]
    assert encoder.rows == 3 and not summary.already_complete  # shard 1: rows 5-8, row 6 bad
    assert_whole(out)
    assert pq.read_table(out / "part-000001.parquet").column("text").to_pylist()[0] == "text number 5"
    assert embed_corpus(src, out, LocalEngine(FakeEncoder()), settings(keep_text=True, verify=True)).repaired == []
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
        embed_corpus(src, out, LocalEngine(FakeEncoder()), settings())
    monkeypatch.undo()
    damage(out / "part-000000.parquet", "truncate")
    encoder = FakeEncoder()
    summary = embed_corpus(src, out, LocalEngine(encoder), settings())
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
        real_shard = job_module.write_shard

        def write_shard(directory, index, *args, **kwargs):
            if index == 2:
                fill_disk_after(monkeypatch, 2)
            return real_shard(directory, index, *args, **kwargs)

        monkeypatch.setattr(job_module, "write_shard", write_shard)
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
        embed_corpus(src, out, LocalEngine(FakeEncoder()), settings())
    monkeypatch.undo()
    manifest = Manifest.load(out)
    assert manifest.rows_consumed == 8 and [s["file"] for s in manifest.shards] == [
        "part-000000.parquet",
        "part-000001.parquet",
    ]
    assert not list(out.glob("*.tmp"))  # the failed write's temporary file is gone (its space is free again)
    summary = embed_corpus(src, out, LocalEngine(FakeEncoder()), settings())
    assert summary.new_rows == 13 and not summary.repaired
    assert_whole(out)


def test_unwritable_output_fails_before_the_model_loads(tmp_path):
    src = write_txt(tmp_path / "in.txt", 5)
    (tmp_path / "afile").write_text("x", encoding="utf-8")
    engine = LocalEngine(lambda: pytest.fail("model loaded"), model=FakeEncoder.model_name, dtype="float32")
    with pytest.raises(OutputError, match=r"cannot write .*afile/out: Not a directory"):
        embed_corpus(src, tmp_path / "afile" / "out", engine, settings())
    if os.geteuid() != 0:  # root writes into read-only directories anyway
        readonly = tmp_path / "ro"
        readonly.mkdir(mode=0o555)
        with pytest.raises(OutputError, match="Permission denied"):
            embed_corpus(src, readonly / "out", engine, settings())
