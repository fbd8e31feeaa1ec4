"""The local engine: embeds a job's rows in this process, through any :class:`~minilm_npu.contract.Encoder`.

Several devices are the encoder's business (``MiniLMEncoder(device="npu:0,npu:1")``); the job writes and commits
what :meth:`LocalEngine.stream` yields.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from ..contract import Encoder
from ..errors import InputError
from .engines import EmbedSettings, ShardBatch
from .readers import CorpusReader, Record


class LocalEngine:
    """Embeds in this process through an encoder.

    Args:
        encoder: An :class:`~minilm_npu.contract.Encoder`, or a zero-argument factory for one (called only when
            there is work to do).
        model: Model name for the fingerprint; defaults to the encoder's ``model_name``.
        dtype: dtype for the fingerprint; defaults to the encoder's ``config.dtype``.
    """

    def __init__(self, encoder: Encoder | Callable[[], Encoder], model: str | None = None, dtype: str | None = None):
        self._encoder: Encoder | None = encoder if isinstance(encoder, Encoder) else None
        self._factory: Callable[[], Encoder] | None = None if isinstance(encoder, Encoder) else encoder
        self._lock = threading.Lock()  # two shards in flight must not load two models
        self.model: str = model or self.encoder.model_name
        self.dtype: str = dtype or self.encoder.config.dtype

    @property
    def encoder(self) -> Encoder:
        """The encoder, built on first use."""
        with self._lock:
            if self._encoder is None:
                assert self._factory is not None
                self._encoder = self._factory()
            return self._encoder

    def stream(
        self, reader: CorpusReader, settings: EmbedSettings, start_after: tuple[int, int] | None
    ) -> Generator[ShardBatch, None, None]:
        """Shards in order, with the next shard's reading overlapping this one's embedding.

        Two shards are in flight at most: one embedding on the one encoding thread, the next read and queued
        meanwhile. One encoding thread, not two: every thread that runs CPU forwards keeps its own OpenMP worker
        pool, and libgomp stops spin-waiting once the process holds more OpenMP threads than cores (see
        :func:`minilm_npu.devices.release_host_threads`), which made a second thread slower, not faster. A bad row
        in ``fail`` mode first lets the shards before it finish, so they are committed.
        """
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilm-corpus") as pool:
            pending: deque[tuple[list[Record], Future]] = deque()
            try:
                for records in reader.chunks(settings.shard_rows, start_after):
                    settings.check_rows(records, reader.files)
                    pending.append((records, pool.submit(self._embed, records, settings.batch_size)))
                    if len(pending) >= 2:
                        records, future = pending.popleft()
                        yield records, future.result()
            except InputError:
                while pending:
                    records, future = pending.popleft()
                    yield records, future.result()
                raise
            while pending:
                records, future = pending.popleft()
                yield records, future.result()

    def _embed(self, records: list[Record], batch_size: int | None) -> np.ndarray:
        texts = [r.text for r in records if r.text is not None and r.error is None]
        if not texts:
            return np.empty((0, self.encoder.dimension), dtype=np.float32)
        vectors = self.encoder.encode(texts, batch_size=batch_size, normalize_embeddings=True)
        return np.asarray(vectors, dtype=np.float32)
