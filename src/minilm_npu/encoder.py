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
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import DEFAULT_MAX_BATCH_TOKENS, EncoderConfig, config_from_arguments
from .devices import parse_devices
from .engine.backend import create_backend
from .engine.cpu_execution import CpuExecution
from .errors import InputError
from .modelfiles import ModelFiles, resolve_model
from .scheduling import plan_batches
from .st_compat import SentenceTransformerSurface
from .st_compat import encode as encode_st_compatible
from .tokenization import Tokenizer, check_token_ids
from .workers import DeviceModel, DeviceWorker, run_planned

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_BATCH_TOKENS",
    "DeviceWorker",
    "EncoderConfig",
    "MiniLMEncoder",
    "plan_batches",
]


class MiniLMEncoder(SentenceTransformerSurface, DeviceModel):
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
        self.config: EncoderConfig = config_from_arguments(
            config,
            model_path=model_path,
            device=device,
            dtype=dtype,
            backend=backend,
            max_batch_tokens=max_batch_tokens,
            batch_size=batch_size,
        )
        self.model_files: ModelFiles = resolve_model(self.config.model_path)
        devices = parse_devices(self.config.device)
        self.tokenizer = Tokenizer(self.model_files)
        backends = [create_backend(self.config.backend, self.model_files, dev, self.config.dtype) for dev in devices]
        #: The workers (one per device, each with its share of the cores), the CPU lanes and their rules.
        self.execution: CpuExecution[DeviceWorker] = CpuExecution(backends, DeviceWorker)
        self.workers: list[DeviceWorker] = self.execution.workers

    @property
    def dimension(self) -> int:
        """Embedding dimension (384 for all-MiniLM-L6-v2): the model's last Dense module's, else its pooled width."""
        return self.model_files.dimension

    @property
    def pooling(self) -> str:
        """sentence-transformers' pooling mode (``"mean"``, ``"cls"``, ``"max"``, ...), as the model's files say."""
        return self.model_files.pooling

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
        normalize = self.model_files.normalize if normalize is None else bool(normalize)
        if self.model_files.include_prompt:
            prompt_length = 0  # pooled like every other token: nothing for the backend to know
        return run_planned(
            self.execution,
            ids,
            self.dimension,
            self._batch_size(batch_size),
            self.config.max_batch_tokens,
            normalize,
            progress,
            prompt_length,
        )

    def warmup(self) -> None:
        """Run each device's warm-up shapes and one tiny forward pass (first-call allocation, kernel selection,
        graph builds)."""
        ids = self.tokenize(["warm-up"])
        for worker in self.workers:
            worker.warmup()
            worker.run(ids, normalize=True)
