"""The dynamic batcher with a fake encoder: merging, ordering, budgets, overload, several devices, shutdown."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

pytest.importorskip("fastapi")

from minilm_npu.server.batcher import Batcher  # noqa: E402
from minilm_npu.server.errors import ApiError  # noqa: E402
from minilm_npu.server.settings import ServerSettings  # noqa: E402
from minilm_npu.server.vectors import finish  # noqa: E402

from .server_fakes import FakeEncoder  # noqa: E402


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=60))


def _embed_once(batcher, ids):
    """Start the batcher, embed one request, close it."""

    async def main():
        batcher.start()
        try:
            return await batcher.embed(ids)
        finally:
            batcher.close()

    return _run(main())


def _serve(batcher, requests, one_at_a_time=False):
    """Start the batcher, embed every request (concurrently, or one after another as a lone client), close it."""

    async def main():
        batcher.start()
        try:
            if one_at_a_time:
                return [await batcher.embed(ids) for ids in requests]
            return await asyncio.gather(*(batcher.embed(ids) for ids in requests))
        finally:
            batcher.close()

    return _run(main())


def _requests(fake, n, seed=0):
    rng = random.Random(seed)
    out = []
    for r in range(n):
        texts = [" ".join(f"w{r}_{i}_{j}" for j in range(rng.randint(0, 40))) for i in range(rng.randint(1, 9))]
        out.append(fake.tokenize(texts))
    return out


@pytest.mark.parametrize("devices", [("cpu",), ("cpu:0", "cpu:1", "cpu:2")])
def test_concurrent_requests_get_exactly_their_vectors(devices):
    fake = FakeEncoder(devices=devices, delay_s=0.002, max_batch_tokens=300)
    batcher = Batcher(fake, ServerSettings(max_wait_ms=2))
    requests = _requests(fake, 64)

    async def main():
        batcher.start()
        try:
            with batcher.admit():
                return await asyncio.gather(*(batcher.embed(ids) for ids in requests))
        finally:
            batcher.close()

    results = _run(main())
    for ids, got in zip(requests, results):
        np.testing.assert_array_equal(got, np.stack([fake.vector(seq) for seq in ids]))
    # Requests were merged (fewer forward passes than requests) and no batch broke the token budget.
    assert len(fake.batches) < len(requests)
    assert sum(fake.batches) == sum(len(ids) for ids in requests)


def test_token_budget_splits_a_large_request():
    fake = FakeEncoder(max_batch_tokens=100)
    batcher = Batcher(fake)
    ids = [[101] + [2000] * 48 + [102]] * 5  # 50 tokens each: two per batch
    out = _embed_once(batcher, ids)
    assert out.shape == (5, 384) and fake.batches == [2, 2, 1]


def test_sequence_cap_bounds_the_forward_batch():
    """The batcher forms the forward batch once: at most config.batch_size sequences, oldest first."""
    fake = FakeEncoder(batch_size=3)
    batcher = Batcher(fake)
    ids = [[101, 2000 + i, 102] for i in range(7)]
    out = _embed_once(batcher, ids)
    assert fake.batches == [3, 3, 1]
    np.testing.assert_array_equal(out, np.stack([fake.vector(seq) for seq in ids]))


def test_admission_limit_is_429():
    batcher = Batcher(FakeEncoder(), ServerSettings(max_concurrent_requests=2))
    with batcher.admit(), batcher.admit():
        with pytest.raises(ApiError) as info:
            with batcher.admit():
                pass
    assert info.value.status == 429 and "--max-concurrent-requests" in info.value.message
    with batcher.admit():  # slots come back
        pass


def test_inference_error_reaches_every_request_and_worker_survives():
    fake = FakeEncoder()
    batcher = Batcher(fake, ServerSettings(max_wait_ms=5))

    async def main():
        batcher.start()
        try:
            fake.fail = True
            results = await asyncio.gather(
                batcher.embed([[101, 102]]), batcher.embed([[101, 7, 102]]), return_exceptions=True
            )
            fake.fail = False
            return results, await batcher.embed([[101, 102]])
        finally:
            batcher.close()

    failed, ok = _run(main())
    assert all(isinstance(e, ApiError) and e.status == 500 for e in failed)
    assert ok.shape == (1, 384)


def test_cancelled_request_is_dropped_from_the_queue():
    fake = FakeEncoder(delay_s=0.2, max_batch_tokens=4)
    batcher = Batcher(fake)

    async def main():
        batcher.start()
        try:
            first = asyncio.create_task(batcher.embed([[101, 102]]))
            await asyncio.sleep(0.05)  # the worker is now busy with `first`
            doomed = asyncio.create_task(batcher.embed([[101, 5, 102]] * 20))
            await asyncio.sleep(0.01)
            doomed.cancel()
            await first
        finally:
            batcher.close()

    _run(main())
    assert sum(fake.batches) < 10  # the cancelled request's 20 inputs were not all run


def test_close_finishes_queued_work_then_refuses():
    fake = FakeEncoder(delay_s=0.01, max_batch_tokens=10)
    batcher = Batcher(fake)

    async def main():
        batcher.start()
        tasks = [asyncio.create_task(batcher.embed([[101, i, 102]])) for i in range(10)]
        await asyncio.sleep(0)
        await asyncio.to_thread(batcher.close)
        done = await asyncio.gather(*tasks)
        with pytest.raises(ApiError) as info:
            await batcher.embed([[101, 102]])
        return done, info.value

    done, refused = _run(main())
    assert len(done) == 10 and refused.status == 503


def test_finish_dimensions_and_normalize():
    raw = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(finish(raw, 2), [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
    np.testing.assert_array_equal(finish(raw, normalize=False), raw)


def test_small_work_runs_on_the_event_loop_large_work_in_the_pool():
    import threading

    batcher = Batcher(FakeEncoder())

    async def main():
        small = await batcher.preprocess(threading.current_thread, work=batcher.INLINE_WORK)
        large = await batcher.preprocess(threading.current_thread, work=batcher.INLINE_WORK + 1)
        unknown = await batcher.preprocess(threading.current_thread)
        return small, large, unknown

    try:
        small, large, unknown = _run(main())
    finally:
        batcher.close()
    assert small is threading.main_thread()
    assert large.name.startswith("minilm-tokenize") and unknown.name.startswith("minilm-tokenize")


def test_one_event_loop_wake_up_per_batch(monkeypatch):
    """A batch that finishes 16 requests resolves them all with one call into the event loop, not 16."""
    fake = FakeEncoder(delay_s=0.05)
    batcher = Batcher(fake)
    requests = [fake.tokenize([f"text {i}"]) for i in range(16)]
    calls = []

    async def main():
        loop = asyncio.get_running_loop()
        original = loop.call_soon_threadsafe
        monkeypatch.setattr(loop, "call_soon_threadsafe", lambda *a: (calls.append(a[0]), original(*a))[1])
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.embed(requests[0]))  # occupies the device for 50 ms
            await asyncio.sleep(0.01)
            rest = await asyncio.gather(*(batcher.embed(ids) for ids in requests[1:]))
            return [await first, *rest]
        finally:
            batcher.close()

    results = _run(main())
    for ids, got in zip(requests, results):
        np.testing.assert_array_equal(got, np.stack([fake.vector(seq) for seq in ids]))
    assert fake.batches == [1, 15] and len(calls) == 2


def test_a_batch_runs_on_every_core_only_when_it_runs_alone():
    """Nothing else running or queued: the batch gets every core (run_on_all_cores), as a one-batch encode call;
    under load, each worker its share (a CPU lane's one thread)."""
    fake = FakeEncoder(devices=("cpu:0", "cpu:1"), delay_s=0.02, max_batch_tokens=40)
    one = fake.tokenize(["a lone query"])
    _embed_once(Batcher(fake), one)
    assert (fake.alone, fake.batches) == (1, [1])
    fake.alone, fake.batches = 0, []
    requests = _requests(fake, 32)
    results = _serve(Batcher(fake), requests)
    for ids, out in zip(requests, results):
        np.testing.assert_array_equal(out, np.stack([fake.vector(seq) for seq in ids]))
    assert len(fake.batches) > 4 and fake.alone < len(fake.batches) // 2  # mostly shares: work was queued
    assert set(fake.ran_on) == {"cpu:0", "cpu:1"}  # the second worker took work while the first was busy


def test_a_lone_clients_batches_all_run_on_the_first_worker():
    """One client, one request at a time: every batch on the first worker (on a CPU, the one thread that runs on
    every core, so the process keeps a single OpenMP pool)."""
    fake = FakeEncoder(devices=("cpu:0", "cpu:1"), delay_s=0.002)
    _serve(Batcher(fake), _requests(fake, 20), one_at_a_time=True)
    assert len(fake.ran_on) == 20 and set(fake.ran_on) == {"cpu:0"} and fake.alone == 20


def test_the_batcher_runs_on_the_encoders_batch_workers(monkeypatch):
    fake = FakeEncoder(devices=("cpu",))
    lanes = [type(fake.workers[0])("cpu", fake) for _ in range(2)]
    monkeypatch.setattr(fake, "batch_workers", lambda: lanes)
    batcher = Batcher(fake)
    batcher.start()
    try:
        assert batcher.workers_alive == 2
    finally:
        batcher.close()
