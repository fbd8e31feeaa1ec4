"""The encoder: text in, normalised all-MiniLM-L6-v2 vectors out, in input order.

Three stages, as the reference port and infinity split them:

* **pre** (CPU): validate once, tokenize with HF ``tokenizers`` at the model's real limit (256), sort by length;
* **core** (device): the backend's forward pass and pooling on token ids only, one batch at a time, one worker
  (and one model copy) per device;
* **post**: L2 normalisation in float32, ``.cpu()``, rows written back to their input positions.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .backend import DEFAULT_BACKEND, DTYPES, Backend, create_backend
from .devices import parse_devices
from .errors import InputError
from .modelfiles import ModelFiles, resolve_model
from .tokenization import Tokenizer

log = logging.getLogger(__name__)

#: Default cap on real (unpadded) tokens per forward pass: large enough to keep a card busy, small enough that
#: activations of a 6-layer, 384-wide model stay well under 100 MB.
DEFAULT_MAX_BATCH_TOKENS = 16384


def plan_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Group indices into batches of similar length, longest first.

    Sorting by length (as sentence-transformers does) keeps padding small for padded backends and groups
    similar sequences for the packed one. A batch closes at ``batch_size`` sequences or when the next sequence
    would push its real tokens past ``max_batch_tokens``; a single sequence always fits.
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
    return batches


class _Worker:
    """One device, one model copy, one lock: a backend is never run by two threads at once."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self.lock = threading.Lock()

    def run(self, batch: list[list[int]], normalize: bool) -> np.ndarray:
        with self.lock:
            pooled = self.backend.embed(batch)
            if normalize:
                pooled = F.normalize(pooled.float(), p=2, dim=1)
            return pooled.float().cpu().numpy()


class MiniLMEncoder:
    """Sentence embeddings with all-MiniLM-L6-v2 (or another BERT-family sentence-transformers model).

    Args:
        model_path: A local sentence-transformers directory, a hub id, or None for the bundled official model.
        device: One string: ``"auto"`` (npu → cuda → mps → cpu), ``"cpu"``, ``"npu:0"``, ``"cuda:1"``, or a
            comma-separated list (``"npu:0,npu:1"``) for one worker per device. ``"cuda"``/``"npu"`` mean every
            visible card.
        dtype: ``"float32"`` (exact), ``"bfloat16"``, ``"float16"`` or ``"int8"``.
        backend: ``"packed"`` (the fast engine) or ``"transformers"`` (the reference port's method).
        max_batch_tokens: Cap on real tokens per forward pass.

    Raises:
        ModelFilesError, DeviceError, InputError: with a message that says what to do.
    """

    def __init__(self, model_path: str | None = None, device: str = "auto", dtype: str = "float32",
                 backend: str | None = None, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS):
        if dtype not in DTYPES:
            raise InputError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
        if not isinstance(max_batch_tokens, int) or max_batch_tokens < 1:
            raise InputError(f"max_batch_tokens must be a positive integer, not {max_batch_tokens!r}")
        self.model_files: ModelFiles = resolve_model(model_path)
        self.devices: list[torch.device] = parse_devices(device)
        self.dtype = dtype
        self.backend_name = backend or DEFAULT_BACKEND
        self.max_batch_tokens = max_batch_tokens
        self.tokenizer = Tokenizer(self.model_files)
        self._workers = [_Worker(create_backend(self.backend_name, self.model_files, dev, dtype))
                         for dev in self.devices]

    @property
    def device(self) -> torch.device:
        """The (first) device the model runs on."""
        return self.devices[0]

    @property
    def dimension(self) -> int:
        """Embedding dimension (384)."""
        return self.model_files.hidden_size

    @property
    def max_seq_length(self) -> int:
        """Token limit, special tokens included (256), from sentence_bert_config.json."""
        return self.model_files.max_seq_length

    @property
    def model_name(self) -> str:
        """The model's hub id or directory name."""
        return self.model_files.name

    def __repr__(self) -> str:
        devices = ",".join(str(d) for d in self.devices)
        return f"MiniLMEncoder(model={self.model_name!r}, device={devices!r}, dtype={self.dtype!r}, " \
               f"backend={self.backend_name!r})"

    # -- pre -------------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], truncate: bool = True) -> list[list[int]]:
        """Token ids per text (``[CLS] ... [SEP]``), truncated at ``max_seq_length`` unless ``truncate=False``."""
        return self.tokenizer.encode(texts, truncate=truncate)

    @staticmethod
    def _check_texts(sentences: object) -> list[str]:
        if isinstance(sentences, (bytes, bytearray, dict)) or not isinstance(sentences, Iterable):
            raise InputError(f"sentences must be a string or a list of strings, not {type(sentences).__name__}")
        texts = list(sentences)
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(f"sentences[{index}] is {type(text).__name__}, not a string")
        return texts

    def _check_ids(self, token_ids: Sequence[Sequence[int]]) -> list[list[int]]:
        checked = []
        vocab = self.tokenizer.vocab_size
        for index, ids in enumerate(token_ids):
            ids = list(ids)
            if not ids:
                raise InputError(f"token_ids[{index}] is empty")
            if len(ids) > self.max_seq_length:
                raise InputError(f"token_ids[{index}] has {len(ids)} tokens; the model takes at most "
                                 f"{self.max_seq_length}")
            if not all(isinstance(i, (int, np.integer)) and 0 <= i < vocab for i in ids):
                raise InputError(f"token_ids[{index}] holds a value that is not a token id in [0, {vocab})")
            checked.append([int(i) for i in ids])
        return checked

    # -- core + post -----------------------------------------------------------------------------------------
    def encode(self, sentences: str | Sequence[str], batch_size: int = 32, normalize_embeddings: bool = True,
               show_progress_bar: bool = False) -> np.ndarray:
        """Embed texts.

        Args:
            sentences: One string or a list of strings. Empty strings are embedded (``[CLS] [SEP]``), as in the
                reference; texts over ``max_seq_length`` tokens are truncated (logged at info level).
            batch_size: Most sequences per forward pass.
            normalize_embeddings: L2-normalise each vector (the model's own Normalize module).
            show_progress_bar: Show a tqdm bar.

        Returns:
            float32 array ``(N, dimension)`` in input order, or ``(dimension,)`` for a single string.
        """
        single = isinstance(sentences, str)
        texts = [sentences] if single else self._check_texts(sentences)
        vectors = self._encode_ids(self.tokenize(texts), batch_size, normalize_embeddings, show_progress_bar)
        return vectors[0] if single else vectors

    def encode_token_ids(self, token_ids: Sequence[Sequence[int]], batch_size: int = 32,
                         normalize_embeddings: bool = True, show_progress_bar: bool = False,
                         device_index: int | None = None) -> np.ndarray:
        """Embed already-tokenized inputs (ids as :meth:`tokenize` returns them); same output as :meth:`encode`.

        Args:
            device_index: Run on ``devices[device_index]`` only (a server's per-device worker drives its own
                card this way); by default the work is spread over every device.
        """
        if device_index is not None and not 0 <= device_index < len(self._workers):
            raise InputError(f"device_index {device_index} is out of range: {len(self._workers)} device(s)")
        return self._encode_ids(self._check_ids(token_ids), batch_size, normalize_embeddings, show_progress_bar,
                                device_index)

    def _encode_ids(self, ids: list[list[int]], batch_size: int, normalize: bool, progress: bool,
                    device_index: int | None = None) -> np.ndarray:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, not {batch_size!r}")
        out = np.empty((len(ids), self.dimension), dtype=np.float32)
        if not ids:
            return out
        batches = plan_batches([len(x) for x in ids], batch_size, self.max_batch_tokens)
        with tqdm(total=len(ids), disable=not progress, unit="text", desc="encode") as bar:
            if len(self._workers) == 1 or device_index is not None:
                worker = self._workers[device_index or 0]
                for batch in batches:
                    out[batch] = worker.run([ids[i] for i in batch], normalize)
                    bar.update(len(batch))
            else:
                self._run_parallel(ids, batches, normalize, out, bar)
        return out

    def _run_parallel(self, ids: list[list[int]], batches: list[list[int]], normalize: bool,
                      out: np.ndarray, bar: tqdm) -> None:
        """One thread per device pulls batches from a shared queue, so faster cards take more of the work."""
        work: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        for batch in batches:
            work.put(batch)
        failures: list[tuple[torch.device, BaseException]] = []
        stop = threading.Event()
        bar_lock = threading.Lock()

        def serve(worker: _Worker) -> None:
            while not stop.is_set():
                try:
                    batch = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    out[batch] = worker.run([ids[i] for i in batch], normalize)
                except BaseException as err:  # noqa: BLE001 - reported below with the device's name
                    failures.append((worker.backend.device, err))
                    stop.set()
                    return
                with bar_lock:
                    bar.update(len(batch))

        threads = [threading.Thread(target=serve, args=(w,), name=f"minilm-{w.backend.device}", daemon=True)
                   for w in self._workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            device, err = failures[0]
            raise RuntimeError(f"encoding failed on device {device}: {type(err).__name__}: {err}") from err

    def engine_choices(self) -> dict[str, str]:
        """What the engine picked on the first device (attention strategy, GELU, graphs...) and why, for reports;
        empty for backends that make no device-dependent choices."""
        choices = getattr(self._workers[0].backend, "choices", None)
        return dict(choices()) if choices else {}

    def warmup(self) -> None:
        """Run one tiny forward pass on every device (first-call allocation, kernel selection, graph build)."""
        ids = self.tokenize(["warm-up"])
        for worker in self._workers:
            with worker.lock:
                warmup = getattr(worker.backend, "warmup", None)
                if warmup is not None:  # the backend knows its shapes (e.g. every static-shape gear on an NPU)
                    warmup()
            worker.run(ids, normalize=True)
