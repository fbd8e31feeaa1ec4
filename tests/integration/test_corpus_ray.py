"""The Ray engine on a local Ray (CPU actors) writes the same rows, skips and vectors as the in-process engine."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from minilm_npu.corpus.job import EmbedSettings, LocalEngine, embed_corpus
from minilm_npu.corpus.search import corpus_files

from ..texts import ALL

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")


def read(out):
    tables = [pq.read_table(f) for f in corpus_files(out)]
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    return ids, np.concatenate([np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in tables])


def test_ray_local_matches_in_process(tmp_path, encoder):
    from minilm_npu.corpus.ray_engine import RayEngine

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    src = tmp_path / "docs.jsonl"
    rows = [{"text": f"{ALL[i % len(ALL)]} #{i}", "key": f"k{i}"} for i in range(200)]
    rows[37] = {"text": None, "key": "k37"}  # a bad row, skipped by both engines
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = dict(id_field="key", on_error="skip", shard_rows=64, progress=False)

    local = embed_corpus(src, tmp_path / "local", LocalEngine(encoder), EmbedSettings(**settings))
    engine = RayEngine(device="cpu", num_cpus=2, model=encoder.model_name)
    distributed = embed_corpus(src, tmp_path / "ray", engine, EmbedSettings(**settings))
    assert not ray.is_initialized()  # the engine shuts down the Ray it started

    assert (distributed.rows_written, distributed.rows_skipped) == (local.rows_written, local.rows_skipped) == (199, 1)
    local_ids, local_vectors = read(tmp_path / "local")
    ray_ids, ray_vectors = read(tmp_path / "ray")
    assert ray_ids == local_ids == [f"k{i}" for i in range(200) if i != 37]
    np.testing.assert_allclose(ray_vectors, local_vectors, atol=1e-6, rtol=0)
    assert open(distributed.skipped_file).read() == open(local.skipped_file).read()
