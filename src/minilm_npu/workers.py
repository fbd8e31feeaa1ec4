"""The device side of the encoder and the reranker: one :class:`DeviceWorker` per device (or CPU lane), and
:func:`run_planned`, which runs a call's checked ids through them in planned batches, in input order."""

from __future__ import annotations

import threading
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import EncoderConfig
from .contract import ModelInfo
from .engine.backend import Backend
from .engine.cpu_execution import CpuExecution, use_threads
from .modelfiles import ModelFiles
from .scheduling import DevicePool, plan_batches


class DeviceWorker:
    """One device, one model copy, one lock: a backend is never run by two threads at once through one worker
    (CPU lanes are several workers on one backend that says it may be shared; see
    :class:`~minilm_npu.engine.cpu_execution.CpuExecution`).

    Args:
        backend: The engine on this worker's device.
        host_threads: CPU threads this worker's forwards use (None: the calling thread's count); with several CPU
            workers each gets its share of the cores (:attr:`CpuExecution.worker_threads
            <minilm_npu.engine.cpu_execution.CpuExecution.worker_threads>`), a lane one thread.
    """

    def __init__(self, backend: Backend, host_threads: int | None = None):
        self.backend = backend
        self.host_threads = host_threads
        self.lock = threading.Lock()

    @property
    def device(self) -> torch.device:
        """Where this worker's model runs."""
        return self.backend.device

    def run(self, ids: list[list[int]], normalize: bool) -> np.ndarray:
        """Exactly this batch as one forward pass: ids already validated, vectors back on the CPU, in order."""
        return self._run(ids, normalize, self.host_threads)

    def run_on_all_cores(self, ids: list[list[int]], normalize: bool) -> np.ndarray:
        """:meth:`run` on the calling thread's count even where this worker has a share of the cores: for a batch
        that no other worker runs beside (an ``encode`` call of one batch, a server's lone batch)."""
        return self._run(ids, normalize, None)

    def _run(self, ids: list[list[int]], normalize: bool, threads: int | None, prompt_length: int = 0) -> np.ndarray:
        """:meth:`run` on ``threads`` (None: the calling thread's count); ``prompt_length`` (the encoder's, for models
        that leave a prompt out of pooling) reaches the backend only when set."""
        with self.lock, use_threads(threads):
            pooled = self.backend.embed(ids, prompt_length=prompt_length) if prompt_length else self.backend.embed(ids)
            if normalize:
                pooled = F.normalize(pooled.float(), p=2, dim=1)
            return pooled.float().cpu().numpy()

    def run_tokens(self, ids: list[list[int]]) -> list[np.ndarray]:
        """Last-layer hidden states per sequence, special tokens included: float32 ``(len(seq), dimension)`` arrays
        on the CPU, in order, as one forward pass on this worker's share of the cores."""
        with self.lock, use_threads(self.host_threads):
            return [state.float().cpu().numpy() for state in self.backend.token_embeddings(ids)]

    def warmup(self) -> None:
        """The backend's own warm-up shapes (e.g. every static-shape gear on an NPU), on this worker's threads."""
        with self.lock, use_threads(self.host_threads):
            self.backend.warmup()


def run_planned(
    execution: CpuExecution[DeviceWorker],
    ids: list[list[int]],
    dimension: int,
    batch_size: int,
    max_batch_tokens: int,
    normalize: bool,
    progress: bool,
    prompt_length: int = 0,
) -> np.ndarray:
    """Checked ids through the workers of ``execution``: planned into batches (longest first), run on the first
    worker, or side by side where the plan has work for several; rows back in input order.

    Returns:
        float32 ``(len(ids), dimension)``.
    """
    out = np.empty((len(ids), dimension), dtype=np.float32)
    if not ids:
        return out
    first = execution.workers[0]
    if len(ids) == 1 and not progress:  # one query: skip the planning and progress-bar bookkeeping
        out[0] = first._run(ids, normalize, None, prompt_length)[0]
        return out
    lengths = [len(x) for x in ids]
    batches = plan_batches(lengths, batch_size, max_batch_tokens, len(execution.workers))
    side_by_side = execution.side_by_side(batches, lengths)
    with tqdm(total=len(ids), disable=not progress, unit="text", desc="encode") as bar:
        if len(side_by_side) < 2:  # no other thread to involve
            for batch in batches:
                out[batch] = first._run([ids[i] for i in batch], normalize, None, prompt_length)
                bar.update(len(batch))
        else:
            _run_parallel(side_by_side, ids, batches, normalize, out, bar, prompt_length)
    return out


def _run_parallel(
    workers: list[DeviceWorker],
    ids: list[list[int]],
    batches: list[list[int]],
    normalize: bool,
    out: np.ndarray,
    bar: tqdm,
    prompt_length: int = 0,
) -> None:
    """Every worker pulls the next planned batch when it is free, so faster cards take more of the work."""
    pending = iter(batches)
    lock = threading.Lock()
    failures: list[tuple[torch.device, BaseException]] = []

    def next_batch(_worker_index: int) -> list[int] | None:
        with lock:
            return None if failures else next(pending, None)

    def run(worker: DeviceWorker, batch: list[int]) -> None:
        try:
            out[batch] = worker._run([ids[i] for i in batch], normalize, worker.host_threads, prompt_length)
        except BaseException as err:  # noqa: BLE001 - reported below with the device's name
            with lock:
                failures.append((worker.device, err))
            return
        with lock:
            bar.update(len(batch))

    pool = DevicePool(workers, next_batch, run, name="minilm-encode").start()
    pool.join()
    if failures:
        device, err = failures[0]
        raise RuntimeError(f"encoding failed on device {device}: {type(err).__name__}: {err}") from err


_Model = TypeVar("_Model", bound="DeviceModel")


class DeviceModel:
    """What the encoder and the reranker share: a model on devices, one :class:`DeviceWorker` each (subclasses set
    ``config``, ``model_files``, ``workers`` and ``execution``, and take ``config=`` in their constructor)."""

    config: EncoderConfig
    model_files: ModelFiles
    workers: list[DeviceWorker]
    execution: CpuExecution[DeviceWorker]

    @classmethod
    def from_config(cls: type[_Model], config: EncoderConfig) -> _Model:
        """The model ``config`` describes."""
        return cls(config=config)

    @property
    def devices(self) -> list[torch.device]:
        """Every device the model runs on, one worker each."""
        return [worker.device for worker in self.workers]

    @property
    def device(self) -> torch.device:
        """The (first) device the model runs on."""
        return self.workers[0].device

    @property
    def dtype(self) -> str:
        """``config.dtype``."""
        return self.config.dtype

    @property
    def backend_name(self) -> str:
        """``config.backend``."""
        return self.config.backend

    @property
    def max_batch_tokens(self) -> int:
        """``config.max_batch_tokens``."""
        return self.config.max_batch_tokens

    @property
    def model_name(self) -> str:
        """The model's hub id or directory name."""
        return self.model_files.name

    @property
    def model_info(self) -> ModelInfo:
        """The model's name and where its files are, as plain data (the contract's view of ``model_files``)."""
        files = self.model_files
        return ModelInfo(name=files.name, directory=str(files.directory), weights_path=str(files.weights_path))

    def batch_workers(self) -> list[DeviceWorker]:
        """The workers a server runs formed batches on, side by side: one per device, or on one CPU one-thread
        lanes sharing its model (:meth:`CpuExecution.batch_workers
        <minilm_npu.engine.cpu_execution.CpuExecution.batch_workers>`), so that a busy server's batches run as a
        multi-batch ``encode`` call's do. A batch that runs alone should use :meth:`DeviceWorker.run_on_all_cores`."""
        return self.execution.batch_workers()

    def engine_choices(self) -> dict[str, str]:
        """What the engine picked on the first device (attention strategy, GELU, graphs...) and why, for reports,
        plus the CPU lanes where there are any; empty for backends that make no device-dependent choices."""
        return {**self.workers[0].backend.choices(), **self.execution.describe()}
