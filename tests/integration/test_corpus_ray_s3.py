"""The Ray engine on object storage: actors get the ``s3://`` URI and write their shards there themselves.

Plumbing with the fake encoder on a local Ray (the real model's s3 path is tests/integration/test_corpus_s3.py):
the output on s3 equals the local engine's local output row for row, and the driver still receives no vectors.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from minilm_npu.corpus.job import EmbedSettings, LocalEngine, embed_corpus
from minilm_npu.corpus.manifest import MANIFEST_NAME, Manifest
from minilm_npu.corpus.search import corpus_files
from minilm_npu.corpus.storage import parquet_source
from tests.fixtures.corpus import FakeEncoder

from ..s3 import moto_endpoint, point_aws_at, s3  # noqa: F401 - fixtures

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_on_s3(moto_endpoint):
    """A local Ray started with the AWS variables set, as a cluster's nodes would have them."""
    with pytest.MonkeyPatch.context() as patch:
        point_aws_at(moto_endpoint, patch)
        patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
        patch.setenv("PYTHONPATH", f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")  # the fake encoder
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield
        ray.shutdown()


def read(out):
    tables = [pq.read_table(parquet_source(f)) for f in corpus_files(out)]
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    return ids, np.concatenate([np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in tables])


def test_ray_workers_write_their_shards_to_s3(tmp_path, ray_on_s3, s3):
    from minilm_npu.corpus.ray_engine import RayEngine

    src = tmp_path / "a.txt"
    src.write_text("".join(f"line {i}\n" for i in range(1, 131)), encoding="utf-8")
    s3.put("in/a.txt", src.read_bytes())
    settings = EmbedSettings(shard_rows=40, progress=False)
    local = embed_corpus(src, tmp_path / "local", LocalEngine(FakeEncoder()), settings)
    engine = RayEngine(device="cpu,cpu", model=FakeEncoder.model_name, encoder_factory=FakeEncoder)
    result = embed_corpus(s3.uri("in/a.txt"), s3.uri("ray"), engine, settings)

    assert result.rows_written == local.rows_written == 130
    ids, vectors = read(s3.uri("ray"))
    local_ids, local_vectors = read(tmp_path / "local")
    assert ids == local_ids
    np.testing.assert_array_equal(vectors, local_vectors)
    manifest = Manifest.load(s3.uri("ray"))
    names = [s.file for s in manifest.shards]
    assert names[0] == "part-000000-000000000000.parquet" and names == sorted(names)
    for shard in manifest.shards:  # what the actors wrote is what the manifest recorded
        assert shard.sha256 == hashlib.sha256(s3.get(f"ray/{shard.file}")).hexdigest()
    assert s3.keys("ray/") == sorted([f"ray/{MANIFEST_NAME}"] + [f"ray/{name}" for name in names])
    assert 0 < engine.driver_bytes < result.rows_written * FakeEncoder.dimension * 4 / 2
