"""Dynamic batching: inputs from concurrent requests share device batches.

Requests are admitted up to ``max_concurrent_requests`` (beyond that: 429). Each admitted request is validated and
tokenized — in a small thread pool, or on the event loop when it is small enough that the handoff would cost more
than the work (see :meth:`Batcher.preprocess`) — then its sequences join one FIFO queue. This queue is
the only place a forward batch is formed: whenever a device's worker is free (the encoder's
:class:`~minilm_npu.contract.DeviceWorker`, driven by :class:`~minilm_npu.scheduling.DevicePool`), it takes the
queued sequences, oldest first, up to the encoder's ``max_batch_tokens`` real tokens and ``batch_size``
sequences, and runs exactly that batch, as text-embeddings-inference does. An idle device does not wait for
company unless ``max_wait_ms`` asks it to. Every row goes back to its own request at its own position, so each
request gets exactly its vectors, in its order. A request's sequences may be spread over several batches (and
devices); it completes when its last row lands.

The workers return raw pooled vectors here (``normalize=False``); normalisation and ``dimensions``
are per request (TEI's ``normalize: false`` and mixed ``dimensions`` can share one batch), see ``vectors.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from ..contract import DeviceWorker, Encoder
from ..engine.cpu_execution import CpuExecution
from ..scheduling import DevicePool
from .errors import ApiError
from .metrics import ServerMetrics
from .settings import ServerSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Job:
    """One request's sequences and where their vectors go."""

    __slots__ = ("ids", "out", "remaining", "future", "loop", "enqueued", "started", "done")

    def __init__(self, ids: list[list[int]], dimension: int, loop: asyncio.AbstractEventLoop):
        self.ids = ids
        self.out = np.empty((len(ids), dimension), dtype=np.float32)
        self.remaining = len(ids)
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.enqueued = time.monotonic()
        self.started = False
        self.done = False  # set under the batcher's lock; a cancelled or failed job is done too


def _settle_all(results: list[tuple[asyncio.Future, np.ndarray]]) -> None:
    """Runs on the event loop: resolve every request a batch finished (one wake-up of the loop per batch)."""
    for future, result in results:
        _settle(future, result)


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None) -> None:
    """Runs on the event loop: resolve unless the awaiting request already gave up."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Batcher:
    """Merges concurrent requests into device batches and runs them, one worker thread per device.

    Args:
        encoder: The :class:`~minilm_npu.contract.Encoder`; its ``workers`` run the batches, its
            ``config.max_batch_tokens`` and ``config.batch_size`` bound them.
        settings: ``max_concurrent_requests`` (more are refused with 429) and ``max_wait_ms`` (how long an idle
            device waits for a batch to fill; 0, the default, means not at all).
        metrics: Where queue and batch figures go.
        tokenizer_threads: Size of the pool that runs tokenization and validation.
    """

    def __init__(
        self,
        encoder: Encoder,
        settings: ServerSettings | None = None,
        *,
        metrics: ServerMetrics | None = None,
        tokenizer_threads: int = 2,
    ):
        settings = settings or ServerSettings()
        self.encoder = encoder
        self.max_batch_tokens = encoder.config.max_batch_tokens
        self.max_batch_size = encoder.config.batch_size
        self.max_concurrent_requests = settings.max_concurrent_requests
        self.max_wait_s = settings.max_wait_ms / 1000.0
        self.metrics = metrics or ServerMetrics()
        self.dimension = int(encoder.dimension)
        self._queue: deque[tuple[_Job, int]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._pool: DevicePool | None = None
        self._in_flight = 0
        self._running = 0  # batches on the workers now
        self._preprocess_pool = ThreadPoolExecutor(max_workers=tokenizer_threads, thread_name_prefix="minilm-tokenize")
        self._probe_ids: list[list[int]] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    @property
    def workers_alive(self) -> int:
        """How many device workers are running."""
        return self._pool.alive if self._pool else 0

    def start(self) -> None:
        """Start one thread per batch worker: one per device, or one-thread lanes (one per core) sharing one CPU's
        model (:meth:`~minilm_npu.contract.Encoder.batch_workers`)."""
        self._pool = DevicePool(
            self.encoder.batch_workers(), self._take_batch, self._run_batch, name="minilm-batcher"
        ).start()

    def close(self, timeout: float = 30.0) -> None:
        """Finish what is queued, stop the workers, and fail anything left (server shutting down)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._pool:
            self._pool.join(timeout)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
        for job, _ in left:
            self._fail(job, ApiError(503, "the server is shutting down", kind="unhealthy"))
        self._preprocess_pool.shutdown(wait=False, cancel_futures=True)

    # -- request side (event loop) -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Hold one of ``max_concurrent_requests`` slots for the request's whole life, or raise 429."""
        if self._in_flight >= self.max_concurrent_requests:
            raise ApiError(
                429,
                f"the server is busy: {self.max_concurrent_requests} requests are already in "
                f"progress (--max-concurrent-requests); retry shortly",
                kind="overloaded",
            )
        self._in_flight += 1
        self.metrics.in_flight.inc()
        try:
            yield
        finally:
            self._in_flight -= 1
            self.metrics.in_flight.dec()

    #: Request-side work up to this size (characters of text, token ids, floats out) runs on the event loop.
    #: Why: a trip through the pool is two thread wake-ups, each a scheduler time slice on a busy machine, while
    #: tokenizing a sentence or rendering a vector takes far less; only larger work is worth moving off the loop.
    INLINE_WORK = 8 * 384

    async def preprocess(self, fn: Callable[..., T], *args: Any, work: int | None = None, **kwargs: Any) -> T:
        """Run request-side CPU work (validation, tokenization, rendering): in the tokenizer pool, off the event
        loop, unless ``work`` (the caller's size estimate) is at most :attr:`INLINE_WORK`."""
        if work is not None and work <= self.INLINE_WORK:
            return fn(*args, **kwargs)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._preprocess_pool, lambda: fn(*args, **kwargs))

    async def embed(self, ids: list[list[int]]) -> np.ndarray:
        """Raw pooled vectors ``(len(ids), dimension)`` for already-validated token ids, in their order."""
        if not ids:
            return np.empty((0, self.dimension), dtype=np.float32)
        job = _Job(ids, self.dimension, asyncio.get_running_loop())
        with self._cond:
            if self._closing:
                raise ApiError(503, "the server is shutting down", kind="unhealthy")
            self._queue.extend((job, index) for index in range(len(ids)))
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()  # not notify(): a worker after the first may not take it (see _take_batch)
        try:
            return await job.future
        finally:
            # A request that gave up (client gone, shutdown timeout) must not keep device time: its queued
            # sequences are dropped when a worker reaches them.
            with self._cond:
                job.done = True

    async def health(self, timeout: float) -> bool:
        """Whether a tiny real forward pass through the workers completes, finite, within ``timeout``."""
        if self._closing or not self.workers_alive:
            return False
        if self._probe_ids is None:
            self._probe_ids = await self.preprocess(self.encoder.tokenize, [""])
        try:
            vectors = await asyncio.wait_for(self.embed(self._probe_ids), timeout)
        except Exception:  # noqa: BLE001 - any failure means "cannot answer"; logged for the operator
            log.warning("health check failed", exc_info=True)
            return False
        return bool(np.isfinite(vectors).all())

    # -- device side (worker threads) --------------------------------------------------------------------------
    def _take_batch(self, worker_index: int) -> tuple[list[tuple[_Job, int]], bool] | None:
        """Block until work is queued, then form one batch; None when closing and drained (no lock held).

        Which worker may take work, and which batch gets every core, are the CPU execution policy's rules
        (:meth:`CpuExecution.takes_work <minilm_npu.engine.cpu_execution.CpuExecution.takes_work>`,
        :meth:`~minilm_npu.engine.cpu_execution.CpuExecution.runs_alone`), the ones the encoder follows too.

        Returns:
            The batch, and whether it runs alone (no other batch running, nothing left queued): then it gets every
            core (``run_on_all_cores``), as a one-batch ``encode`` call does, instead of its lane's share.
        """
        with self._cond:
            while True:
                while (
                    not self._queue or not CpuExecution.takes_work(worker_index, self._running)
                ) and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return None
                if self.max_wait_s > 0:  # only when asked: wait for company until the oldest is max_wait old
                    deadline = self._queue[0][0].enqueued + self.max_wait_s
                    while (
                        self._queue
                        and not self._closing
                        and len(self._queue) < self.max_batch_size
                        and self._queued_tokens() < self.max_batch_tokens
                    ):
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._cond.wait(remaining)
                batch: list[tuple[_Job, int]] = []
                tokens = 0
                while self._queue and len(batch) < self.max_batch_size:
                    job, index = self._queue[0]
                    if job.done:
                        self._queue.popleft()
                        continue
                    length = len(job.ids[index])
                    if batch and tokens + length > self.max_batch_tokens:
                        break
                    self._queue.popleft()
                    batch.append((job, index))
                    tokens += length
                self.metrics.queue_depth.set(len(self._queue))
                if self._queue:
                    self._cond.notify()  # let another idle device start on the rest
                if batch:
                    alone = CpuExecution.runs_alone(len(self._queue), self._running)
                    self._running += 1
                    return batch, alone

    def _queued_tokens(self) -> int:
        # Bounded: stops counting at the budget, so a long queue costs no more than one batch's worth.
        total = 0
        for job, index in self._queue:
            total += len(job.ids[index])
            if total >= self.max_batch_tokens:
                break
        return total

    def _run_batch(self, worker: DeviceWorker, taken: tuple[list[tuple[_Job, int]], bool]) -> None:
        """Run one formed batch on one worker and hand every row back (a worker thread)."""
        batch, alone = taken
        try:
            vectors = self._forward(worker, batch, alone)
        finally:
            # Before the rows go back: a lone client's next request must find this worker counted as idle, or a
            # second worker would take it on its share of the cores.
            with self._cond:
                self._running -= 1
                if self._queue:
                    self._cond.notify_all()
        if vectors is not None:
            self._deliver(batch, vectors)

    def _forward(self, worker: DeviceWorker, batch: list[tuple[_Job, int]], alone: bool) -> np.ndarray | None:
        """The batch's raw vectors, or None after failing every request in it (the worker lives on)."""
        now = time.monotonic()
        for job, _ in batch:
            if not job.started:
                job.started = True
                self.metrics.queue_time.observe(now - job.enqueued)
        ids = [job.ids[index] for job, index in batch]
        self.metrics.batch_size.observe(len(ids))
        self.metrics.batch_tokens.observe(sum(len(seq) for seq in ids))
        try:
            return (worker.run_on_all_cores if alone else worker.run)(ids, normalize=False)
        except Exception as err:  # noqa: BLE001 - every request in the batch learns, the worker lives on
            log.exception("inference failed on a batch of %d inputs", len(ids))
            error = ApiError(500, f"inference failed: {type(err).__name__}: {err}", kind="backend")
            for job in {id(job): job for job, _ in batch}.values():
                self._fail(job, error)
            return None
        finally:
            self.metrics.inference_time.observe(time.monotonic() - now)

    def _deliver(self, batch: list[tuple[_Job, int]], vectors: np.ndarray) -> None:
        finished: list[_Job] = []
        with self._cond:
            for row, (job, index) in enumerate(batch):
                if job.done:
                    continue
                job.out[index] = vectors[row]
                job.remaining -= 1
                if job.remaining == 0:
                    job.done = True
                    finished.append(job)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, np.ndarray]]] = {}
        for job in finished:
            self.metrics.inputs.inc(len(job.ids))
            self.metrics.tokens.inc(sum(len(seq) for seq in job.ids))
            by_loop.setdefault(job.loop, []).append((job.future, job.out))
        # One call per loop, not per request: each call_soon_threadsafe writes the loop's wake-up pipe, and with
        # 64 requests in a batch those writes (and the context switches they cause) added up.
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, results)
            except RuntimeError:  # the event loop is already closed: nobody is waiting
                pass

    def _fail(self, job: _Job, error: BaseException) -> None:
        with self._cond:
            if job.done:
                return
            job.done = True
        try:
            job.loop.call_soon_threadsafe(_settle, job.future, None, error)
        except RuntimeError:  # the event loop is already closed: nobody is waiting
            pass
