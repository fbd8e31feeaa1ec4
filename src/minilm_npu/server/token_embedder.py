"""``/embed_all``'s forwards: per-token outputs on one thread of their own, beside the batcher's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import ApiError
from .vectors import json_body


class TokenEmbedder:
    """Runs ``/embed_all`` forwards on one thread of their own, beside the batcher's.

    Why a thread of its own: per-token outputs are not pooled vectors, so they do not join the batcher's batches;
    and one thread means at most one more OpenMP pool, released after each request
    (:func:`~minilm_npu.devices.release_host_threads`), so the batcher's forwards keep one pool.

    Args:
        worker: The :class:`~minilm_npu.contract.DeviceWorker` to run on (a one-thread CPU lane where the encoder
            has them).
        release: Called on the thread after each request (releases its OpenMP workers).
    """

    def __init__(self, worker: Any, release: Callable[[], object]):
        from concurrent.futures import ThreadPoolExecutor

        self.worker, self.release = worker, release
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilm-token-embeddings")

    def _run(self, chunks: list[list[list[int]]]) -> bytes:
        try:
            states = [state for chunk in chunks for state in self.worker.run_tokens(chunk)]
        except Exception as err:  # noqa: BLE001 - the client learns, the server lives on
            raise ApiError(500, f"inference failed: {type(err).__name__}: {err}", kind="backend") from err
        finally:
            self.release()
        finite = all(np.isfinite(state).all() for state in states)
        return json_body([state.tolist() for state in states], finite=bool(finite))

    async def run(self, chunks: list[list[list[int]]]) -> bytes:
        """The JSON body ``[input][token][dimension]`` for already-validated, already-chunked ids."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self._run, chunks)

    def close(self) -> None:
        """Stop the thread (queued requests are cancelled)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
