"""``minilm-npu embed`` on object storage with the real model, against a real S3 API (moto, started by the tests).

An s3 input embedded into an s3 output holds exactly the rows and vectors of the same job run locally, and
sentence-transformers' vectors; ``--verify`` and ``search`` read it back; a run SIGKILLed between writing a shard
and committing it is resumed by the next run, which ignores and deletes the shard the manifest does not list.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from minilm_npu.cli.main import main
from minilm_npu.corpus.job import CRASH_ENV, EmbedSettings, LocalEngine, embed_corpus
from minilm_npu.corpus.lock import LOCK_NAME
from minilm_npu.corpus.manifest import MANIFEST_NAME, SKIPPED_NAME, Manifest
from minilm_npu.corpus.search import corpus_files, search_corpus
from minilm_npu.corpus.storage import parquet_source

from ..ranking import assert_top_k
from ..s3 import moto_endpoint, s3  # noqa: F401 - fixtures
from ..texts import ALL

pytestmark = pytest.mark.slow
ROWS, SHARD, BAD = 30, 8, 11  # row 11 is not valid JSON: skipped


def texts():
    return [f"{ALL[i % len(ALL)]} #{i}" for i in range(1, ROWS + 1) if i != BAD]


def write_input(path):
    lines = [json.dumps({"text": f"{ALL[i % len(ALL)]} #{i}"}) if i != BAD else "{broken" for i in range(1, ROWS + 1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def read(out):
    tables = [pq.read_table(parquet_source(f)) for f in corpus_files(out)]
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    return ids, np.concatenate([np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in tables])


def embed_args(src, out, *extra):
    return [
        "embed",
        str(src),
        "-o",
        str(out),
        "--device",
        "cpu",
        "--shard-rows",
        str(SHARD),
        "--no-progress",
        "--on-error",
        "skip",
        "--keep-text",
        *extra,
    ]


def test_s3_input_and_output_equal_local_and_sentence_transformers(tmp_path, s3, encoder, st_model, capsys):
    src = write_input(tmp_path / "docs.jsonl")
    s3.put("in/docs.jsonl", src.read_bytes())
    settings = EmbedSettings(shard_rows=SHARD, on_error="skip", keep_text=True, progress=False)
    local = embed_corpus(src, tmp_path / "local", LocalEngine(encoder), settings)
    assert main(embed_args(s3.uri("in/docs.jsonl"), s3.uri("vectors"))) == 0
    assert f"embedded {ROWS - 1} rows into {s3.uri('vectors')}" in capsys.readouterr().out

    ids, vectors = read(s3.uri("vectors"))
    local_ids, local_vectors = read(tmp_path / "local")
    assert ids == local_ids == [str(i) for i in range(1, ROWS + 1) if i != BAD]
    # The same job, row for row; within float noise, not bit for bit: each forward's thread count follows the
    # machine's load (AdaptiveThreads), and oneDNN's summation order may follow the thread count (~6e-8).
    np.testing.assert_allclose(vectors, local_vectors, atol=1e-6, rtol=0)
    np.testing.assert_allclose(vectors, st_model.encode(texts(), normalize_embeddings=True), atol=1e-5, rtol=0)
    skipped = [json.loads(line) for line in s3.get(f"vectors/{SKIPPED_NAME}").splitlines()]
    assert [(s["file"], s["row"]) for s in skipped] == [(s3.uri("in/docs.jsonl"), BAD)]
    manifest = Manifest.load(s3.uri("vectors"))
    assert manifest.complete and manifest.rows_written == local.rows_written
    assert s3.keys("vectors/") == sorted(
        [f"vectors/{MANIFEST_NAME}", f"vectors/{SKIPPED_NAME}"] + [f"vectors/{s.file}" for s in manifest.shards]
    )

    assert main(embed_args(s3.uri("in/docs.jsonl"), s3.uri("vectors"), "--verify")) == 0
    assert f"{len(manifest.shards)} shards' checksums verified; nothing to do" in capsys.readouterr().out
    query = texts()[4]
    hits = search_corpus(s3.uri("vectors"), query, encoder, k=3)
    # The same top 3 as the local corpus's vectors give, up to the order of scores within float noise: the two
    # runs' vectors agree within 1e-6 per element (above), which moves a unit query's score by at most
    # sqrt(384) * 1e-6 < 2e-5.
    reference = dict(zip(local_ids, (local_vectors @ encoder.encode(query)).tolist()))
    assert_top_k(hits, reference, k=3, atol=2e-5)
    assert hits[0].text == query and all(h.text == texts()[local_ids.index(h.id)] for h in hits)
    assert main(["search", s3.uri("vectors"), query, "-k", "1", "--device", "cpu"]) == 0
    assert query in capsys.readouterr().out


def test_s3_sigkill_between_shard_and_commit_then_resume(tmp_path, s3, encoder):
    src = write_input(tmp_path / "docs.jsonl")
    out = s3.uri("run")
    killed = subprocess.run(
        [sys.executable, "-m", "minilm_npu.cli.main", *embed_args(src, out)],
        env={**os.environ, CRASH_ENV: "after-shard:2"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    manifest = Manifest.load(out)
    assert [s.file for s in manifest.shards] == ["part-000000.parquet", "part-000001.parquet"]
    # Shard 2 is on the store, whole, but not committed; the killed run's lease is still there.
    assert {"run/part-000002.parquet", f"run/{LOCK_NAME}"} <= set(s3.keys("run/"))
    s3.put("run/part-000050.parquet", b"from an even older crash")

    settings = EmbedSettings(shard_rows=SHARD, on_error="skip", keep_text=True, progress=False)
    summary = embed_corpus(src, out, LocalEngine(encoder), settings)  # the dead holder's lease is taken over
    assert summary.new_rows == ROWS - 2 * SHARD and summary.rows_written == ROWS - 1
    ids, vectors = read(out)
    assert ids == [str(i) for i in range(1, ROWS + 1) if i != BAD]  # every row once, in order
    np.testing.assert_allclose(vectors, encoder.encode(texts()), atol=1e-6, rtol=0)
    listed = [s.file for s in Manifest.load(out).shards]
    assert s3.keys("run/") == sorted(
        [f"run/{MANIFEST_NAME}", f"run/{SKIPPED_NAME}"] + [f"run/{name}" for name in listed]
    )
