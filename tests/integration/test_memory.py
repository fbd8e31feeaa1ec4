"""Memory stays flat under work that never repeats a batch shape: the CPU engine, a corpus job and the server.

The packed engine's token dimension takes a new value with almost every batch, and CPU kernels cache per shape:
oneDNN keeps a primitive (with its JIT-compiled kernels) per row count and thread count of every linear layer, and
torch's ideep layer keeps its own. Without bounds that is a few MB for every new row count. The engine rounds its
token dimension up to a few gears (:func:`minilm_npu.engine.policy.round_tokens_to_gear`), so once a workload has
met its gears nothing new is cached.

Each test runs a real process, lets it meet its gears (a warm-up of the same kind of work), then runs hundreds of
batches of token counts it has not seen and bounds the RSS growth. The bounds are absolute and loose: what may move
after a warm-up (allocator noise, the next shard's rows, the server's queue) stays within tens of MB, while with
``MINILM_NPU_TOKEN_GEARS=0`` (exact token counts) the same runs grow by hundreds of MB (docs/engine.md, "Memory").
RSS comes from ``/proc`` (Linux) and, for the server, from its own ``/metrics``.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from minilm_npu.corpus.manifest import MANIFEST_NAME, Manifest

from .server_process import start_server

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from Linux /proc"),
]

#: RSS growth allowed after the warm-up (MB); with exact token counts the same runs grow by hundreds of MB.
ENGINE_GROWTH_MB = 48
CORPUS_GROWTH_MB = 64
SERVER_GROWTH_MB = 64
#: Server: device batches of warm-up, then of soak.
WARM_BATCHES, SOAK_BATCHES = 80, 200

WORDS = "the a man woman dog cat plays runs quickly slowly over under green river city music data model".split()


def rss_mb(pid: int) -> float:
    """Resident set size of a process (Linux ``/proc``), MB; 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def test_engine_rss_flat_over_hundreds_of_new_batch_shapes():
    """96 batches of 32 sequences after a warm-up of 96, every one of a token count not seen before."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.memory_child", "float32", "64", "256"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    growth = result["end_mb"] - result["warm_mb"]
    assert growth < ENGINE_GROWTH_MB, f"RSS grew {growth:.0f} MB over 96 new batch shapes: {result}"


def test_corpus_job_rss_flat_after_the_first_shards(tmp_path):
    """``minilm-npu embed`` of 16,000 short texts (1-10 words) in shards of 250 rows: after the first 4,000 rows
    RSS stays flat. Shards this small hold fewer texts of each length than a batch, so nearly every batch mixes
    lengths and has a token count of its own, as the batches of a corpus of real, long-tailed texts do."""
    rng = random.Random(3)
    src = tmp_path / "texts.txt"
    src.write_text("".join(sentence(rng, rng.randint(1, 10)) + "\n" for _ in range(16000)), encoding="utf-8")
    out = tmp_path / "vectors"
    cmd = [sys.executable, "-m", "minilm_npu.cli.main", "embed", str(src), "-o", str(out)]
    cmd += ["--device", "cpu", "--shard-rows", "250", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples: list[tuple[int, float]] = []  # (rows committed, RSS MB)
    deadline = time.monotonic() + 900
    while proc.poll() is None and time.monotonic() < deadline:
        rows = committed_rows(out)
        samples.append((rows, rss_mb(proc.pid)))
        time.sleep(0.2)
    if proc.poll() is None:
        proc.kill()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert "embedded 16000 rows" in stdout
    warm = [rss for rows, rss in samples if rows >= 4000 and rss > 0]
    assert len(warm) >= 5, f"too few samples after 4,000 rows: {samples[-5:]}"
    growth = max(warm) - warm[0]
    assert growth < CORPUS_GROWTH_MB, f"RSS grew {growth:.0f} MB after 4,000 rows ({warm[0]:.0f} MB then)"


def committed_rows(out: Path) -> int:
    try:
        return Manifest.load(out).rows_consumed if (out / MANIFEST_NAME).exists() else 0
    except Exception:  # noqa: BLE001 - read while the job replaces it: try again at the next sample
        return 0


def test_server_rss_flat_under_mixed_concurrent_load():
    """8 concurrent clients of the official openai client, 1-8 texts of 1-24 words per request: the server's own
    ``process_resident_memory_bytes`` after 80 device batches is the high mark for the next 200."""
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    from prometheus_client.parser import text_string_to_metric_families

    server = start_server("--device", "cpu", "--max-concurrent-requests", "64")
    stop = threading.Event()
    failures: list[BaseException] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        api = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        while not stop.is_set():
            texts = [sentence(rng, rng.randint(1, 24)) for _ in range(rng.randint(1, 8))]
            try:
                reply = api.embeddings.create(model="all-MiniLM-L6-v2", input=texts)
                assert len(reply.data) == len(texts)
            except BaseException as err:  # noqa: BLE001 - reported by the test thread
                failures.append(err)
                stop.set()

    def metrics() -> tuple[float, float]:
        """(device batches so far, RSS MB) from the server's /metrics."""
        values = {}
        for family in text_string_to_metric_families(httpx.get(server.url + "/metrics", timeout=30).text):
            for sample in family.samples:
                values[sample.name] = sample.value
        return values["minilm_batch_size_count"], values["process_resident_memory_bytes"] / 2**20

    threads = [threading.Thread(target=client, args=(seed,), daemon=True) for seed in range(8)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 600
        batches, warm = metrics()
        while batches < WARM_BATCHES and not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.5)
            batches, warm = metrics()
        start, peak = batches, warm
        while batches < start + SOAK_BATCHES and not stop.is_set() and time.monotonic() < deadline:
            time.sleep(0.5)
            batches, rss = metrics()
            peak = max(peak, rss)
        stop.set()
        for thread in threads:
            thread.join(timeout=150)
    finally:
        stop.set()
        server.stop()
    assert not failures, repr(failures[0])
    assert batches >= start + SOAK_BATCHES, f"only {batches - start:.0f} batches after the warm-up in the time allowed"
    growth = peak - warm
    assert growth < SERVER_GROWTH_MB, f"RSS grew {growth:.0f} MB over {SOAK_BATCHES} batches after warm-up ({warm:.0f})"
