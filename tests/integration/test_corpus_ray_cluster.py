"""A real multi-node Ray cluster on one machine: a worker node is lost mid-job and the job still writes every row
exactly once (Ray restarts the lost actor on a new node and retries its unit; no rerun is needed)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from minilm_npu.corpus.job import EmbedSettings, LocalEngine, embed_corpus
from minilm_npu.corpus.manifest import Manifest
from minilm_npu.corpus.search import corpus_files
from tests.fixtures.corpus import FakeEncoder

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]
NODES_LOG = "MINILM_NPU_TEST_NODES_LOG"


class SlowFakeEncoder(FakeEncoder):
    """The fake encoder taking long enough per unit that a node can be removed while units are in flight."""

    def encode(self, sentences, **kwargs):
        with open(os.environ[NODES_LOG], "a") as log:  # which nodes did the work
            log.write(ray.get_runtime_context().get_node_id() + "\n")
        time.sleep(0.3)
        return super().encode(sentences, **kwargs)


def read(out):
    tables = [pq.read_table(f) for f in corpus_files(out)]
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    return ids, np.concatenate([np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in tables])


def test_worker_node_lost_mid_job_every_row_once(tmp_path):
    from ray.cluster_utils import Cluster

    from minilm_npu.corpus.ray_engine import RayEngine

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"  # workers import the fake
    os.environ[NODES_LOG] = str(tmp_path / "nodes.log")  # set before the nodes start: they inherit it
    src = tmp_path / "docs.txt"
    src.write_text("".join(f"sentence number {i}\n" for i in range(1, 601)), encoding="utf-8")
    settings = EmbedSettings(shard_rows=25, progress=False)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the driver's node runs no actor
    try:
        cluster.add_node(num_cpus=1)
        doomed = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        engine = RayEngine(device="cpu,cpu", model=FakeEncoder.model_name, encoder_factory=SlowFakeEncoder)
        out = tmp_path / "out"
        result: dict = {}
        job = threading.Thread(target=lambda: result.update(summary=embed_corpus(src, out, engine, settings)))
        job.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            manifest = Manifest.load(out) if (out / "_manifest.json").exists() else None
            if manifest is not None and len(manifest.shards) >= 3:
                break
            time.sleep(0.1)
        assert manifest is not None and not manifest.complete, "the job ended before the node could be removed"
        cluster.remove_node(doomed, allow_graceful=False)  # each node holds one actor: one is lost with it
        cluster.add_node(num_cpus=1)  # a replacement, as an autoscaler would bring
        job.join(timeout=240)
        assert not job.is_alive()
        assert result["summary"].rows_written == 600
        nodes = set(Path(os.environ[NODES_LOG]).read_text().split())
        assert len(nodes) == 3, nodes  # the lost node, the survivor, and the replacement the lost actor moved to
    finally:
        ray.shutdown()
        cluster.shutdown()
    local = tmp_path / "local"
    embed_corpus(src, local, LocalEngine(FakeEncoder()), settings)
    ids, vectors = read(out)
    local_ids, local_vectors = read(local)
    assert ids == local_ids == [str(i) for i in range(1, 601)]
    np.testing.assert_array_equal(vectors, local_vectors)
    listed = {s.file for s in Manifest.load(out).shards}
    assert {p.name for p in out.iterdir()} == listed | {"_manifest.json", "_lock"}  # no temporary file left
