"""What the server, the corpus engines and ``verify`` may use of an encoder: the :class:`Encoder` protocol.

:class:`~minilm_npu.encoder.MiniLMEncoder` implements it, and so do the test fakes (a test checks both against
this protocol, signatures included, so a fake cannot drift from the real thing). The server, the corpus job and
``verify`` use nothing else and probe nothing (no ``getattr(encoder, name, default)``); what they need to know
about the model and the engine comes as plain data (:class:`ModelInfo`, ``engine_choices()``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .config import EncoderConfig


@dataclass(frozen=True)
class ModelInfo:
    """Which model an encoder runs, as plain data (reports record it and hash the weights).

    Attributes:
        name: The model's hub id or directory name.
        directory: The directory its files were read from.
        weights_path: Its ``model.safetensors``.
    """

    name: str
    directory: str
    weights_path: str


@runtime_checkable
class TokenizerInfo(Protocol):
    """The part of the tokenizer an encoder's users see."""

    vocab_size: int

    def decode_tokens(self, ids: Sequence[int]) -> list[str]:
        """Token strings for ids."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of token ids."""


@runtime_checkable
class DeviceWorker(Protocol):
    """One device with its own model copy; runs exactly the batch it is given."""

    @property
    def device(self) -> object:
        """The device (a ``torch.device`` for the real encoder)."""

    def run(self, ids: list[list[int]], normalize: bool) -> np.ndarray:
        """Vectors ``(len(ids), dimension)`` float32 for already-validated ids, in their order, as one forward
        pass; L2-normalised when ``normalize``."""

    def run_on_all_cores(self, ids: list[list[int]], normalize: bool) -> np.ndarray:
        """:meth:`run` with every host core even where this worker has a share of them (a CPU worker beside
        others): for a batch nothing else runs beside."""

    def run_tokens(self, ids: list[list[int]]) -> list[np.ndarray]:
        """Last-layer hidden states per sequence (special tokens included), float32 ``(len(seq), dimension)``
        arrays in order, as one forward pass on this worker's share of the cores."""


@runtime_checkable
class Encoder(Protocol):
    """Sentence embeddings: texts (or token ids) in, float32 vectors out, in input order.

    Attributes:
        config: The settings it was built with (dtype, backend, batch sizes, ...).
        workers: One :class:`DeviceWorker` per device, in the order of ``config.device``.
        dimension: Vector width.
        max_seq_length: Most tokens per input, special tokens included.
        model_name: The model's hub id or directory name.
        pooling: sentence-transformers' pooling mode (``"mean"``, ``"cls"``, ...).
        model_info: The model's name and files (:class:`ModelInfo`).
        tokenizer: Vocabulary size and id-to-token decoding.
        prompts: Named prompts (sentence-transformers' ``prompt_name``): name -> text put before an input.
    """

    config: EncoderConfig
    workers: Sequence[DeviceWorker]
    tokenizer: TokenizerInfo

    @property
    def dimension(self) -> int: ...

    @property
    def max_seq_length(self) -> int: ...

    @property
    def model_name(self) -> str: ...

    @property
    def pooling(self) -> str: ...

    @property
    def prompts(self) -> dict[str, str]: ...

    @property
    def model_info(self) -> ModelInfo: ...

    def tokenize(
        self, texts: Sequence[str], truncate: bool = True, truncation_direction: str = "right"
    ) -> list[list[int]]:
        """Token ids per text (``[CLS] ... [SEP]``), truncated at ``max_seq_length`` unless ``truncate=False``;
        ``truncation_direction="left"`` keeps a long text's end (special tokens kept either way)."""

    def encode(
        self,
        sentences: str | Sequence[str],
        batch_size: int | None = None,
        normalize_embeddings: bool | None = None,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """Vectors for texts: ``(N, dimension)``, or ``(dimension,)`` for one string. ``normalize_embeddings``:
        None for what the model's modules give (L2-normalised when it ends in a Normalize module), True to
        L2-normalise, False for the vectors before the model's final Normalize."""

    def encode_token_ids(
        self,
        token_ids: Sequence[Sequence[int]],
        batch_size: int | None = None,
        normalize_embeddings: bool | None = None,
        show_progress_bar: bool = False,
    ) -> np.ndarray:
        """Vectors for token ids (checked here, the edge for in-process callers)."""

    def batch_workers(self) -> Sequence[DeviceWorker]:
        """The workers that run formed batches side by side (a server's): ``workers``, or on one CPU whose engine
        may be shared, one-thread lanes on that one model, one per core."""

    def warmup(self) -> None:
        """Run each device's warm-up shapes once (allocation, kernel choice, graph builds)."""

    def engine_choices(self) -> dict[str, str]:
        """What the engine picked on the first device (attention strategy, kernels, graphs, ...) and why, for
        reports; empty for an engine that makes no device-dependent choices."""


@runtime_checkable
class Reranker(Protocol):
    """Cross-encoder scores for text pairs: what the server and ``verify`` may use of a reranker.

    Its workers run token-id batches as an encoder's do (:class:`DeviceWorker`), returning the classifier's logits
    ``(len(ids), num_labels)`` instead of vectors, so the server batches pairs with the same batcher.

    Attributes:
        config: The settings it was built with.
        workers: One :class:`DeviceWorker` per device.
        tokenizer: Vocabulary size and id-to-token decoding.
        num_labels: Scores per pair (1 for a relevance model); ``dimension`` is the same number (a worker's width).
        labels: The label names, in order.
        max_seq_length: Most tokens of a pair, special tokens included.
        model_name: The model's hub id or directory name.
        model_info: The model's name and files.
    """

    config: EncoderConfig
    workers: Sequence[DeviceWorker]
    tokenizer: TokenizerInfo

    @property
    def num_labels(self) -> int: ...

    @property
    def labels(self) -> tuple[str, ...]: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_seq_length(self) -> int: ...

    @property
    def model_name(self) -> str: ...

    @property
    def model_info(self) -> ModelInfo: ...

    def tokenize(
        self, texts: Sequence[str], truncate: bool = True, truncation_direction: str = "right"
    ) -> list[list[int]]:
        """Token ids of single texts (the server's health probe)."""

    def tokenize_pairs(self, pairs: Sequence[tuple[str, str]], truncate: bool = True) -> list:
        """Token ids of each pair as one sequence (lists of ints that also carry where the second text starts),
        the longer text cut first at ``max_seq_length`` unless ``truncate=False``."""

    def activate(self, logits: np.ndarray, activation_fn: Callable | None = None) -> np.ndarray:
        """The model's activation (Sigmoid for one label, unless its files say otherwise), or ``activation_fn``, on
        logits."""

    def predict(
        self,
        pairs: Sequence[Sequence[str]],
        batch_size: int | None = None,
        show_progress_bar: bool = False,
        activation_fn: Callable | None = None,
        apply_softmax: bool = False,
        convert_to_tensor: bool = False,
    ) -> Any:
        """Scores of pairs, as sentence-transformers' ``CrossEncoder.predict``: ``(N,)`` for one label."""

    def batch_workers(self) -> Sequence[DeviceWorker]:
        """The workers that run formed batches side by side (as :meth:`Encoder.batch_workers`)."""

    def warmup(self) -> None:
        """Run each device's warm-up shapes once."""

    def engine_choices(self) -> dict[str, str]:
        """What the engine picked on the first device, and why."""
