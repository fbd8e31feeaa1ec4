"""The encoder: text in, sentence embeddings out (all-MiniLM-L6-v2's by default), in input order.

Three stages, as the reference port and infinity split them:

* **pre** (CPU): validate once, tokenize with HF ``tokenizers`` at the model's real limit (256), sort by length;
* **core** (device): the backend's forward pass, pooling and Dense modules on token ids only, one batch at a time, one
  :class:`DeviceWorker` (and one model copy) per device, driven by :class:`~minilm_npu.scheduling.DevicePool`;
  on one CPU, a call of several batches runs them on one-thread lanes sharing the model (how the host's threads
  are spent is :class:`~minilm_npu.engine.cpu_execution.CpuExecution`'s to say);
* **post**: the model's Normalize (L2 in float32) unless turned off, ``.cpu()``, rows written back to their input
  positions.

It implements :class:`minilm_npu.contract.Encoder`, the only part of it the server, corpus and verify use.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import DEFAULT_MAX_BATCH_TOKENS, EncoderConfig
from .contract import ModelInfo
from .devices import parse_devices
from .engine.backend import Backend, create_backend
from .engine.cpu_execution import CpuExecution, use_threads
from .errors import InputError
from .modelfiles import ModelFiles, resolve_model
from .scheduling import DevicePool, plan_batches
from .st_compat import SentenceTransformerSurface
from .st_compat import encode as encode_st_compatible
from .tokenization import Tokenizer, check_token_ids

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_BATCH_TOKENS",
    "DeviceWorker",
    "EncoderConfig",
    "MiniLMEncoder",
    "plan_batches",
]


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


class MiniLMEncoder(SentenceTransformerSurface):
    """Sentence embeddings with all-MiniLM-L6-v2, or another sentence-transformers BERT / XLM-RoBERTa bi-encoder.

    A drop-in for ``SentenceTransformer``: ``encode`` also takes its keyword arguments, and ``similarity``,
    ``encode_query``, ``max_seq_length`` (settable) and the rest come from
    :class:`~minilm_npu.st_compat.SentenceTransformerSurface`.

    Args:
        model_path, device, dtype, backend, max_batch_tokens, batch_size: As :class:`EncoderConfig` (the
            defaults are its defaults); ``device`` may also be a ``torch.device``.
        config: All of them at once; when given, the other arguments must be left out.

    Raises:
        ModelFilesError, DeviceError, InputError: with a message that says what to do.
    """

    def __init__(
        self,
        model_path: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        backend: str | None = None,
        max_batch_tokens: int | None = None,
        batch_size: int | None = None,
        *,
        config: EncoderConfig | None = None,
    ):
        given = {
            name: value
            for name, value in (
                ("model_path", model_path),
                ("device", device),
                ("dtype", dtype),
                ("backend", backend),
                ("max_batch_tokens", max_batch_tokens),
                ("batch_size", batch_size),
            )
            if value is not None
        }
        if config is not None and given:
            raise InputError(f"pass either config or settings ({', '.join(given)}), not both")
        if "device" in given:
            given["device"] = str(device)
        self.config: EncoderConfig = config or EncoderConfig(**given)
        self.model_files: ModelFiles = resolve_model(self.config.model_path)
        devices = parse_devices(self.config.device)
        self.tokenizer = Tokenizer(self.model_files)
        backends = [create_backend(self.config.backend, self.model_files, dev, self.config.dtype) for dev in devices]
        #: The workers (one per device, each with its share of the cores), the CPU lanes and their rules.
        self.execution: CpuExecution[DeviceWorker] = CpuExecution(backends, DeviceWorker)
        self.workers: list[DeviceWorker] = self.execution.workers

    @classmethod
    def from_config(cls, config: EncoderConfig) -> MiniLMEncoder:
        """The encoder ``config`` describes."""
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
    def dimension(self) -> int:
        """Embedding dimension (384 for all-MiniLM-L6-v2): the model's last Dense module's, else its pooled width."""
        return self.model_files.dimension

    @property
    def model_name(self) -> str:
        """The model's hub id or directory name."""
        return self.model_files.name

    @property
    def pooling(self) -> str:
        """sentence-transformers' pooling mode (``"mean"``, ``"cls"``, ``"max"``, ...), as the model's files say."""
        return self.model_files.pooling

    @property
    def model_info(self) -> ModelInfo:
        """The model's name and where its files are, as plain data (the contract's view of ``model_files``)."""
        files = self.model_files
        return ModelInfo(name=files.name, directory=str(files.directory), weights_path=str(files.weights_path))

    def __repr__(self) -> str:
        devices = ",".join(str(d) for d in self.devices)
        return (
            f"MiniLMEncoder(model={self.model_name!r}, device={devices!r}, dtype={self.dtype!r}, "
            f"backend={self.backend_name!r})"
        )

    # -- pre -------------------------------------------------------------------------------------------------
    def tokenize(
        self, texts: Sequence[str], truncate: bool = True, truncation_direction: str = "right"
    ) -> list[list[int]]:
        """Token ids per text (``[CLS] ... [SEP]``), truncated at ``max_seq_length`` unless ``truncate=False``;
        ``truncation_direction="left"`` keeps a long text's end instead of its start."""
        return self.tokenizer.encode(texts, truncate=truncate, truncation_direction=truncation_direction)

    @staticmethod
    def _check_texts(sentences: object) -> list[str]:
        if isinstance(sentences, (bytes, bytearray, dict)) or not isinstance(sentences, Iterable):
            raise InputError(f"sentences must be a string or a list of strings, not {type(sentences).__name__}")
        texts = list(sentences)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"sentences[{index}] is {type(text).__name__}, not a string")
        return texts

    # -- core + post -----------------------------------------------------------------------------------------
    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int | None = None,
        normalize_embeddings: bool | None = None,
        show_progress_bar: bool | None = False,
        **st_options,
    ) -> np.ndarray:
        """Embed texts.

        Args:
            sentences: One string or a list of strings. Empty strings are embedded (``[CLS] [SEP]``), as in the
                reference; texts over ``max_seq_length`` tokens are truncated (logged at info level).
            batch_size: Most sequences per forward pass (default ``config.batch_size``, 32).
            normalize_embeddings: None (default): as the model's files say, i.e. L2-normalised when the model ends
                in a Normalize module (all-MiniLM-L6-v2 does), as sentence-transformers returns them; True:
                L2-normalised in any case; False: without the model's final Normalize (raw vectors).
            show_progress_bar: Show a tqdm bar.
            **st_options: sentence-transformers' ``encode`` arguments (``convert_to_tensor``, ``precision``,
                ``output_value``, ``prompt``, ...), with its meaning and output types; see
                :func:`minilm_npu.st_compat.encode`. Anything else is an :class:`InputError` naming it.

        Returns:
            float32 array ``(N, dimension)`` in input order, or ``(dimension,)`` for a single string.
        """
        if st_options or show_progress_bar is None or self.model_files.default_prompt:
            return encode_st_compatible(
                self, sentences, batch_size, normalize_embeddings, show_progress_bar, **st_options
            )
        single = isinstance(sentences, str)
        texts = [sentences] if single else self._check_texts(sentences)
        vectors = self.encode_texts(texts, batch_size, normalize_embeddings, show_progress_bar)
        return vectors[0] if single else vectors

    def encode_texts(
        self,
        texts: list[str],
        batch_size: int | None,
        normalize_embeddings: bool | None,
        show_progress_bar: bool,
        prompt_length: int = 0,
    ) -> np.ndarray:
        """:meth:`encode` for checked texts, any prompt already in them: ``prompt_length`` of their first tokens are
        left out of pooling where the model says so (its Pooling's ``include_prompt`` is False).

        Returns:
            float32 ``(len(texts), dimension)``.
        """
        ids = self.tokenize(texts)
        return self._encode_ids(ids, batch_size, normalize_embeddings, show_progress_bar, prompt_length)

    def token_embeddings(
        self, sentences: Sequence[str], batch_size: int | None = None, show_progress_bar: bool = False
    ) -> list[torch.Tensor]:
        """Last-layer hidden states per text, special tokens included: float32 ``[tokens, dimension]`` tensors on
        the first device, in input order (sentence-transformers' ``output_value="token_embeddings"``)."""
        ids = self.tokenize(self._check_texts(sentences))
        batch_size = self._batch_size(batch_size)
        worker, out = self.workers[0], [None] * len(ids)
        with tqdm(total=len(ids), disable=not show_progress_bar, unit="text", desc="encode") as bar:
            for batch in plan_batches([len(x) for x in ids], batch_size, self.config.max_batch_tokens):
                with worker.lock:
                    states = worker.backend.token_embeddings([ids[i] for i in batch])
                for index, state in zip(batch, states):
                    out[index] = state
                bar.update(len(batch))
        return out

    def encode_token_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        batch_size: int | None = None,
        normalize_embeddings: bool | None = None,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """Embed already-tokenized inputs (ids as :meth:`tokenize` returns them); same output as :meth:`encode`.

        Raises:
            InputError: an empty list, one over ``max_seq_length`` ids, or a value outside the vocabulary.
        """
        ids = check_token_ids(token_ids, self.tokenizer.vocab_size, self.max_seq_length)
        return self._encode_ids(ids, batch_size, normalize_embeddings, show_progress_bar)

    def _batch_size(self, batch_size: int | None) -> int:
        """``batch_size``, or ``config.batch_size`` for None; InputError unless a positive integer."""
        batch_size = self.config.batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, not {batch_size!r}")
        return batch_size

    def _encode_ids(
        self,
        ids: list[list[int]],
        batch_size: int | None,
        normalize: bool | None,
        progress: bool,
        prompt_length: int = 0,
    ) -> np.ndarray:
        batch_size = self._batch_size(batch_size)
        normalize = self.model_files.normalize if normalize is None else bool(normalize)
        if self.model_files.include_prompt:
            prompt_length = 0  # pooled like every other token: nothing for the backend to know
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        if not ids:
            return out
        if len(ids) == 1 and not progress:  # one query: skip the planning and progress-bar bookkeeping
            out[0] = self.workers[0]._run(ids, normalize, None, prompt_length)[0]
            return out
        lengths = [len(x) for x in ids]
        batches = plan_batches(lengths, batch_size, self.config.max_batch_tokens, len(self.workers))
        side_by_side = self.execution.side_by_side(batches, lengths)
        with tqdm(total=len(ids), disable=not progress, unit="text", desc="encode") as bar:
            if len(side_by_side) < 2:  # no other thread to involve
                for batch in batches:
                    batch_ids = [ids[i] for i in batch]
                    out[batch] = self.workers[0]._run(batch_ids, normalize, None, prompt_length)
                    bar.update(len(batch))
            else:
                self._run_parallel(side_by_side, ids, batches, normalize, out, bar, prompt_length)
        return out

    def _run_parallel(
        self,
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

    def warmup(self) -> None:
        """Run each device's warm-up shapes and one tiny forward pass (first-call allocation, kernel selection,
        graph builds)."""
        ids = self.tokenize(["warm-up"])
        for worker in self.workers:
            worker.warmup()
            worker.run(ids, normalize=True)
