"""Crash safety with real processes: SIGKILL at every step of the commit sequence, a second writer, a killed
lock holder. The fake encoder stands in for the model (the real command is killed in test_corpus_resume.py).

The kill matrix runs the job in forked processes and SIGKILLs each at the next step of the commit sequence, one
after another on the same output, so each run resumes what the previous kill left; the last run
(``tests.fixtures.corpus_child``, a program of its own) must leave every input row exactly once, in order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from minilm_npu.corpus.job import CRASH_ENV, CRASH_STAGES, LocalEngine, embed_corpus
from minilm_npu.corpus.lock import LOCK_NAME
from minilm_npu.corpus.manifest import MANIFEST_NAME, Manifest
from minilm_npu.errors import OutputError
from tests.fixtures.corpus import (
    BAD,
    ROOT,
    ROWS,
    FakeEncoder,
    assert_whole,
    child,
    expected_vectors,
    job_settings,
    write_txt,
)


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
            forked(crash, lambda: embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings())) == -signal.SIGKILL
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
        assert (
            forked(crash, lambda: embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings())) == -signal.SIGKILL
        )
        assert out.exists() and (tmp_path / "v.npy.partial" / MANIFEST_NAME).exists()
    embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings())
    np.testing.assert_array_equal(np.load(out), expected_vectors())
    assert [json.loads(line)["row"] for line in open(tmp_path / "v.npy.skipped.jsonl", encoding="utf-8")] == [6, 13]
    assert not (tmp_path / "v.npy.partial").exists() and not list(tmp_path.glob("*.tmp"))


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
        embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings())
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    embed_corpus(src, out, LocalEngine(FakeEncoder()), job_settings())
    assert_whole(out)
