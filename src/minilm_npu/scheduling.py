"""The one multi-device scheduler: a thread per device worker, each pulling its next batch when it is free.

Both the encoder (an in-process ``encode`` over several devices) and the server's batcher run their devices
through :class:`DevicePool`. Pulling (rather than assigning batches up front) is what lets a faster card take more
of the work and what lets the server form a batch from whatever is queued at the moment a device becomes free,
as text-embeddings-inference does. This module imports nothing of minilm_npu.
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
