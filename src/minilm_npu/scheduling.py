"""Batches and who runs them: the encoder's batch plan and the one multi-device scheduler.

:func:`plan_batches` cuts one ``encode`` call's inputs into forward batches. :class:`DevicePool` runs a thread per
device worker, each pulling its next batch when it is free: both the encoder (an in-process ``encode`` over several
devices or CPU lanes) and the server's batcher run their workers through it. Pulling (rather than assigning batches
up front) is what lets a faster card take more of the work and what lets the server form a batch from whatever is
queued at the moment a device becomes free, as text-embeddings-inference does. This module imports nothing of
minilm_npu.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

W = TypeVar("W")
B = TypeVar("B")


class DevicePool(Generic[W, B]):
    """Run ``run(worker, batch)`` for every batch ``next_batch()`` hands out, one thread per worker.

    Args:
        workers: One per device (each is only ever driven by its own thread).
        next_batch: Called by a free worker's thread with the worker's index in ``workers``; blocks until work
            is there (for that worker: the server's batcher keeps the workers after the first for when the first
            is busy), returns None to stop that thread. Must be thread-safe.
        run: Runs one batch on one worker and delivers its result; it handles its own errors (an exception
            that escapes stops that worker's thread).
        name: Thread name prefix.
    """

    def __init__(
        self,
        workers: Sequence[W],
        next_batch: Callable[[int], B | None],
        run: Callable[[W, B], None],
        name: str = "minilm-device",
    ):
        self._next_batch, self._run = next_batch, run
        self._threads = [
            threading.Thread(
                target=self._serve, args=(index, worker), daemon=True, name=f"{name}-{getattr(worker, 'device', index)}"
            )
            for index, worker in enumerate(workers)
        ]

    def _serve(self, index: int, worker: W) -> None:
        while (batch := self._next_batch(index)) is not None:
            self._run(worker, batch)

    def start(self) -> DevicePool[W, B]:
        """Start every worker's thread; returns the pool."""
        for thread in self._threads:
            thread.start()
        return self

    def join(self, timeout: float | None = None) -> None:
        """Wait for every thread to stop (``next_batch`` returned None to each)."""
        for thread in self._threads:
            thread.join(timeout)

    @property
    def alive(self) -> int:
        """How many worker threads are running."""
        return sum(thread.is_alive() for thread in self._threads)


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int, workers: int = 1) -> list[list[int]]:
    """Group indices into batches of similar length, longest first.

    Sorting by length (as sentence-transformers does) keeps padding small for padded backends and groups
    similar sequences for the packed one. A batch closes at ``batch_size`` sequences or when the next sequence
    would push its real tokens past ``max_batch_tokens``; a single sequence always fits. With fewer batches than
    ``workers``, the batch with the most tokens is halved (alternate rows of the length-sorted batch, so both
    halves carry about the same tokens) until every worker has one: 24 texts at ``batch_size=32`` on two devices
    are two batches of 12, not one batch and an idle device.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for index in order:
        if current and (len(current) >= batch_size or tokens + lengths[index] > max_batch_tokens):
            batches.append(current)
            current, tokens = [], 0
        current.append(index)
        tokens += lengths[index]
    if current:
        batches.append(current)
    while 0 < len(batches) < workers:
        largest = max(range(len(batches)), key=lambda b: sum(lengths[i] for i in batches[b]))
        rows = batches[largest]
        if len(rows) < 2:
            break
        batches[largest : largest + 1] = [rows[0::2], rows[1::2]]
    return batches
