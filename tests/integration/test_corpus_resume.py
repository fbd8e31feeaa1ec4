"""Kill-and-resume with the real model: SIGKILL at the worst moments, then one resumed run finishes the job.

Each killed run is a real subprocess of ``minilm-npu embed``; the fault-injection variable makes it SIGKILL itself
exactly between a shard's rename and the manifest commit, and just after a commit, and one run is killed from
outside at whatever point it has reached. The resumed run (in-process, to save a model load) must leave every row
exactly once, in input order, with vectors equal to a direct ``encode``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from minilm_npu.cli.main import main
from minilm_npu.corpus.job import CRASH_ENV
from minilm_npu.corpus.manifest import MANIFEST_NAME, Manifest
from minilm_npu.corpus.search import corpus_files

from ..texts import ALL

pytestmark = pytest.mark.slow
ROWS = 90
SHARD = 10


def texts():
    return [f"{ALL[i % len(ALL)]} #{i}" for i in range(ROWS)]


def embed_cmd(src, out, *extra):
    return [
        sys.executable,
        "-m",
        "minilm_npu.cli.main",
        "embed",
        str(src),
        "-o",
        str(out),
        "--device",
        "cpu",
        "--shard-rows",
        str(SHARD),
        "--no-progress",
        "--keep-text",
        *extra,
    ]


def run_env(crash=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    return env


def committed(out):
    try:
        return Manifest.load(out).rows_consumed if (out / MANIFEST_NAME).exists() else 0
    except Exception:  # noqa: BLE001 - mid-replace reads are retried by the poller
        return 0


def test_sigkill_at_several_points_then_resume(tmp_path, encoder, capsys):
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts()), encoding="utf-8")
    out = tmp_path / "out"
    progress = []
    # Killed with the model loaded and the first shard embedded but not committed (the output then holds only
    # its manifest and lock), then between a shard's rename and its commit, then just after a commit.
    for crash in ("before-shard:0", "after-shard:2", "after-manifest:4"):
        proc = subprocess.run(embed_cmd(src, out), env=run_env(crash), capture_output=True, text=True, timeout=180)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        progress.append(committed(out))
        if crash.startswith("after-shard"):  # shard 2 renamed into place but not committed
            assert (out / "part-000002.parquet").exists()
    assert progress == [0, 20, 50]

    # An outside SIGKILL at whatever point the run has reached once another shard is committed.
    proc = subprocess.Popen(embed_cmd(src, out), env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while committed(out) < 60 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert committed(out) >= 60

    assert main(embed_cmd(src, out)[3:]) == 0
    assert f"embedded {ROWS} rows" in capsys.readouterr().out
    tables = [pq.read_table(f) for f in corpus_files(out)]
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    assert ids == [str(i) for i in range(1, ROWS + 1)]  # every row once, in order
    assert [x for t in tables for x in t.column("text").to_pylist()] == texts()
    got = np.concatenate([np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in tables])
    np.testing.assert_allclose(got, encoder.encode(texts()), atol=1e-6, rtol=0)
    assert not list(out.glob("*.tmp"))

    # A damaged shard: the rerun names it and re-embeds only it, with the same vectors as before.
    shard = out / "part-000003.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    assert main(embed_cmd(src, out, "--verify")[3:]) == 0
    captured = capsys.readouterr()
    assert "repaired damaged shard part-000003.parquet" in captured.err
    assert f"embedded {ROWS} rows" in captured.out and "1 damaged shard(s) re-embedded" in captured.out
    again = np.concatenate(
        [np.stack(pq.read_table(f).column("embedding").to_numpy(zero_copy_only=False)) for f in corpus_files(out)]
    )
    np.testing.assert_allclose(again, got, atol=1e-6, rtol=0)

    # A changed input is refused with a one-line error, before any model loads.
    with open(src, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "one more"}) + "\n")
    assert main(embed_cmd(src, out)[3:]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "changed (size)" in err and "Traceback" not in err
