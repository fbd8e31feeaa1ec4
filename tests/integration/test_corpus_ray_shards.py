"""Ray workers write the shards and the driver only commits: plumbing with a fake encoder on a local Ray.

What the driver receives is measured (no vectors), a killed driver resumes, leftovers of a crash are cleaned, and
the output equals the local engine's row for row.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from minilm_npu.corpus.job import CRASH_ENV, EmbedSettings, LocalEngine, embed_corpus
from minilm_npu.corpus.manifest import Manifest
from minilm_npu.corpus.search import corpus_files
from tests.fixtures.corpus import FakeEncoder

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
ROOT = Path(__file__).resolve().parents[2]


def read(out):
    tables = [pq.read_table(f) for f in corpus_files(out)]
    ids = [i for t in tables for i in t.column("id").to_pylist()]
    return ids, np.concatenate([np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in tables])


def make_inputs(tmp_path: Path) -> list[Path]:
    a = tmp_path / "a.txt"
    a.write_text("".join(f"line {i}\n" for i in range(1, 251)), encoding="utf-8")
    b = tmp_path / "b.jsonl"
    rows = [json.dumps({"text": f"doc {i}"}) if i != 17 else "{broken" for i in range(1, 121)]
    b.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return [a, b]


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Workers import the fake encoder from this tests package.
    os.environ["PYTHONPATH"] = f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


SETTINGS = dict(on_error="skip", shard_rows=40, progress=False)


def test_workers_write_driver_commits_same_rows_as_local(tmp_path, local_ray):
    from minilm_npu.corpus.ray_engine import RayEngine

    inputs = make_inputs(tmp_path)
    local = embed_corpus(inputs, tmp_path / "local", LocalEngine(FakeEncoder()), EmbedSettings(**SETTINGS))
    engine = RayEngine(device="cpu,cpu", model=FakeEncoder.model_name, encoder_factory=FakeEncoder)
    out = tmp_path / "ray"
    result = embed_corpus(inputs, out, engine, EmbedSettings(**SETTINGS))

    assert (result.rows_written, result.rows_skipped) == (local.rows_written, local.rows_skipped) == (369, 1)
    local_ids, local_vectors = read(tmp_path / "local")
    ray_ids, ray_vectors = read(out)
    assert ray_ids == local_ids and ray_ids[:2] == ["a.txt:1", "a.txt:2"] and "b.jsonl:17" not in ray_ids
    np.testing.assert_array_equal(ray_vectors, local_vectors)
    assert open(result.skipped_file).read() == open(local.skipped_file).read()
    # Name order is input order, and the manifest carries each shard's size and checksum.
    manifest = Manifest.load(out)
    names = [s.file for s in manifest.shards]
    assert names == sorted(names) and names[0] == "part-000000-000000000000.parquet"
    # Each shard's input range: rows (start, end], and the bytes its unit read (where a resume plans from).
    first_bytes = len("".join(f"line {i}\n" for i in range(1, 41)))
    assert manifest.shards[0].start == [0, 0] and manifest.shards[0].end == [0, 40]
    assert manifest.shards[0].input_bytes == [0, first_bytes]
    assert manifest.shards[1].input_bytes[0] == first_bytes
    for shard in manifest.shards:
        data = (out / shard.file).read_bytes()
        assert shard.bytes == len(data)
        assert shard.sha256 == hashlib.sha256(data).hexdigest()
    # The driver received reports, not vectors: far less than the vectors' own bytes.
    vector_bytes = result.rows_written * FakeEncoder.dimension * 4
    assert 0 < engine.driver_bytes < vector_bytes / 2, engine.driver_bytes
    assert engine.driver_bytes / len(manifest.shards) < 1500


def test_sigkill_driver_then_rerun_resumes_exactly_once(tmp_path, local_ray):
    inputs = make_inputs(tmp_path)
    out = tmp_path / "out"
    script = (
        "import sys\n"
        "from minilm_npu.corpus.job import EmbedSettings, embed_corpus\n"
        "from minilm_npu.corpus.ray_engine import RayEngine\n"
        "from tests.fixtures.corpus import FakeEncoder\n"
        "engine = RayEngine(device='cpu', num_cpus=1, model=FakeEncoder.model_name, encoder_factory=FakeEncoder)\n"
        f"s = embed_corpus({[str(p) for p in inputs]!r}, {str(out)!r}, engine, EmbedSettings(**{SETTINGS!r}))\n"
        "print('written', s.rows_written)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'src'}")
    killed = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(env, **{CRASH_ENV: "after-shard:3"}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    manifest = Manifest.load(out)
    assert len(manifest.shards) == 3 and not manifest.complete
    unlisted = {p.name for p in out.glob("part-*")} - {s.file for s in manifest.shards}
    assert unlisted  # the killed run's worker-written shards beyond the commit point
    rerun = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "written 369" in rerun.stdout
    local = embed_corpus(inputs, tmp_path / "local", LocalEngine(FakeEncoder()), EmbedSettings(**SETTINGS))
    ids, vectors = read(out)
    local_ids, local_vectors = read(tmp_path / "local")
    assert ids == local_ids and len(set(ids)) == local.rows_written
    np.testing.assert_array_equal(vectors, local_vectors)
    assert {p.name for p in out.glob("part-*")} == {s.file for s in Manifest.load(out).shards}


def test_damaged_ray_shard_is_reembedded_under_its_name(tmp_path, local_ray):
    from minilm_npu.corpus.ray_engine import RayEngine

    inputs = make_inputs(tmp_path)
    out = tmp_path / "out"
    engine = RayEngine(device="cpu", model=FakeEncoder.model_name, encoder_factory=FakeEncoder)
    embed_corpus(inputs, out, engine, EmbedSettings(**SETTINGS))
    before_ids, before_vectors = read(out)
    victim = Manifest.load(out).shards[2].file
    data = bytearray((out / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, same footer: only the checksum can tell
    (out / victim).write_bytes(bytes(data))
    again = embed_corpus(inputs, out, engine, EmbedSettings(**SETTINGS, verify=True))
    assert [r.split(":")[0] for r in again.repaired] == [victim]
    ids, vectors = read(out)
    assert ids == before_ids
    np.testing.assert_array_equal(vectors, before_vectors)


def test_every_format_split_into_units_on_two_actors_matches_local(tmp_path, local_ray):
    """A large .txt and a multi-row-group Parquet file are cut into units that both actors read (each from its own
    offset); CSV and gzip are one unit each. Ids, vectors, skipped rows and name order equal the local engine's."""
    import gzip

    import pyarrow as pa

    from minilm_npu.corpus.ray_engine import RayEngine

    (tmp_path / "a.txt").write_bytes(
        b"\xef\xbb\xbfbom\r\n" + b"".join(b"line %d\r\n" % i for i in range(300)) + b"\xff bad\n\nlast"
    )
    pq.write_table(
        pa.table({"text": [f"p{i}" if i != 50 else None for i in range(130)]}),
        tmp_path / "b.parquet",
        row_group_size=30,
    )
    (tmp_path / "c.csv").write_text('text\n"two\nlines"\nplain\n', encoding="utf-8")
    with gzip.open(tmp_path / "d.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write("".join(json.dumps({"text": f"g{i}"}) + "\n\n" for i in range(90)))
    settings = dict(on_error="skip", shard_rows=40, progress=False)
    local = embed_corpus(tmp_path, tmp_path / "local", LocalEngine(FakeEncoder()), EmbedSettings(**settings))
    engine = RayEngine(device="cpu,cpu", model=FakeEncoder.model_name, encoder_factory=FakeEncoder)
    out = tmp_path / "ray"
    result = embed_corpus(tmp_path, out, engine, EmbedSettings(**settings))
    assert (result.rows_written, result.rows_skipped) == (local.rows_written, local.rows_skipped) == (524, 2)
    ids, vectors = read(out)
    local_ids, local_vectors = read(tmp_path / "local")
    assert ids == local_ids and ids[0] == "a.txt:1"
    np.testing.assert_array_equal(vectors, local_vectors)
    assert open(result.skipped_file).read() == open(local.skipped_file).read()
    names = [s.file for s in Manifest.load(out).shards]
    assert names == sorted(names)
    assert names[:3] == [
        "part-000000-000000000000.parquet",
        "part-000000-000000000040.parquet",
        "part-000000-000000000080.parquet",
    ]
    assert "part-000001-000000000060.parquet" in names  # Parquet units start at row-group boundaries
    assert len(engine.workers) == 2 and min(engine.workers.values()) >= 3, engine.workers
