"""The reranker: text pairs in, a cross-encoder's scores out, with sentence-transformers ``CrossEncoder``'s meaning.

``predict(pairs)`` tokenizes each pair as one sequence as ``CrossEncoder`` does (``[CLS] a [SEP] b [SEP]`` with token
types on BERT, ``<s> a </s></s> b </s>`` on XLM-RoBERTa; the longer text cut first at the model's limit), runs the
packed engine with the model's sequence-classification head (:mod:`minilm_npu.engine.classifier`) and applies the
model's activation (Sigmoid for a one-label model unless its files name another). ``rank(query, documents)``
sorts as ``CrossEncoder.rank`` does. Batches are planned and run on the devices as the encoder's are
(:func:`minilm_npu.workers.run_planned`).

It implements :class:`minilm_npu.contract.Reranker`, the part the server uses.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .config import EncoderConfig, config_from_arguments
from .devices import parse_devices
from .engine.classifier import PackedReranker
from .engine.cpu_execution import CpuExecution
from .errors import InputError, ModelFilesError
from .rerankfiles import RerankerFiles, resolve_reranker
from .tokenization import PairIds, Tokenizer
from .workers import DeviceModel, DeviceWorker, run_planned

__all__ = ["Reranker"]


def load_activation(path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A torch activation from its class path (``torch.nn.modules.activation.Sigmoid``), instantiated.

    Raises:
        ModelFilesError: no such torch class.
    """
    module_name, _, class_name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)()
    except (ImportError, AttributeError, TypeError):
        raise ModelFilesError(f"activation {path!r} is not a torch class this torch has") from None


def _check_pairs(pairs: object) -> tuple[list[tuple[str, str]], bool]:
    """Pairs as a list, and whether one pair was given (``CrossEncoder``'s test: a list or tuple whose first item
    is not itself a list or tuple)."""
    if isinstance(pairs, (list, tuple)) and pairs and not isinstance(pairs[0], (list, tuple)):
        pairs, single = [pairs], True
    elif isinstance(pairs, (list, tuple)):
        single = False
    else:
        raise InputError(f"pairs must be a list of [text, text] pairs, not {type(pairs).__name__}")
    checked = []
    for index, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(isinstance(t, str) for t in pair):
            raise InputError(f"pairs[{index}] must be two strings, not {pair!r:.80}")
        checked.append((pair[0], pair[1]))
    return checked, single


class Reranker(DeviceModel):
    """A cross-encoder (BERT or XLM-RoBERTa / RoBERTa sequence classifier) on the packed engine.

    Args:
        model_path: A cross-encoder directory (what ``CrossEncoder.save`` writes) or a hub id in the cache.
        device, dtype, max_batch_tokens, batch_size: As :class:`~minilm_npu.config.EncoderConfig`.
        backend: ``"packed"`` (the only engine with classification heads).
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
        if self.config.backend != "packed":
            raise InputError(f"a reranker runs on the packed engine; backend {self.config.backend!r} has no head")
        self.reranker_files: RerankerFiles = resolve_reranker(self.config.model_path)
        self.model_files = self.reranker_files.files
        self.activation_fn = load_activation(self.reranker_files.activation)
        self.tokenizer = Tokenizer(self.model_files)
        devices = parse_devices(self.config.device)
        backends = [PackedReranker(self.reranker_files, dev, self.config.dtype) for dev in devices]
        #: The workers (one per device, each with its share of the cores), the CPU lanes and their rules.
        self.execution: CpuExecution[DeviceWorker] = CpuExecution(backends, DeviceWorker)
        self.workers: list[DeviceWorker] = self.execution.workers

    # -- what it is ----------------------------------------------------------------------------------------------
    @property
    def num_labels(self) -> int:
        """Scores per pair (1 for a relevance model)."""
        return self.reranker_files.num_labels

    @property
    def labels(self) -> tuple[str, ...]:
        """The model's label names (``id2label``), in order."""
        return self.reranker_files.labels

    @property
    def dimension(self) -> int:
        """Values per pair a worker returns: the logits, ``num_labels``."""
        return self.num_labels

    @property
    def max_seq_length(self) -> int:
        """Most tokens of a pair, special tokens included (the longer text is cut first)."""
        return self.tokenizer.max_seq_length

    def __repr__(self) -> str:
        devices = ",".join(str(w.device) for w in self.workers)
        return f"Reranker(model={self.model_name!r}, device={devices!r}, dtype={self.dtype!r})"

    # -- pre -------------------------------------------------------------------------------------------------
    def tokenize(
        self, texts: Sequence[str], truncate: bool = True, truncation_direction: str = "right"
    ) -> list[list[int]]:
        """Token ids of single texts (``[CLS] ... [SEP]``), as for an encoder."""
        return self.tokenizer.encode(texts, truncate=truncate, truncation_direction=truncation_direction)

    def tokenize_pairs(self, pairs: Sequence[tuple[str, str]], truncate: bool = True) -> list[PairIds]:
        """Token ids of each pair as one sequence, the longer text cut first at ``max_seq_length`` unless
        ``truncate=False`` (then the full ids, for callers that reject long pairs)."""
        return self.tokenizer.encode_pairs(pairs, truncate=truncate)

    # -- scores ----------------------------------------------------------------------------------------------
    def logits(
        self, pairs: Sequence[Sequence[str]], batch_size: int | None = None, show_progress_bar: bool = False
    ) -> np.ndarray:
        """The classifier's raw outputs, float32 ``(len(pairs), num_labels)``, in input order."""
        checked, _ = _check_pairs(pairs)
        return self.logits_of_ids(self.tokenize_pairs(checked), batch_size, show_progress_bar)

    def logits_of_ids(
        self, ids: list[PairIds], batch_size: int | None = None, show_progress_bar: bool = False
    ) -> np.ndarray:
        """:meth:`logits` for pairs already tokenized by :meth:`tokenize_pairs`."""
        batch_size = self.config.batch_size if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, not {batch_size!r}")
        max_tokens = self.config.max_batch_tokens
        return run_planned(self.execution, ids, self.num_labels, batch_size, max_tokens, False, bool(show_progress_bar))

    def activate(self, logits: np.ndarray, activation_fn: Callable | None = None) -> np.ndarray:
        """The model's activation (or ``activation_fn``) on logits, float32, the shape kept."""
        with torch.inference_mode():
            return (activation_fn or self.activation_fn)(torch.from_numpy(np.asarray(logits))).float().numpy()

    def predict(
        self,
        pairs: Sequence[Sequence[str]],
        batch_size: int | None = None,
        show_progress_bar: bool = False,
        activation_fn: Callable | None = None,
        apply_softmax: bool = False,
        convert_to_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """Scores of text pairs, as ``CrossEncoder.predict``.

        Args:
            pairs: ``[[a, b], ...]``, or one pair ``[a, b]``.
            batch_size: Most pairs per forward pass (default ``config.batch_size``).
            show_progress_bar: Show a tqdm bar.
            activation_fn: Applied to the logits instead of the model's own activation (Sigmoid for one label,
                unless its files name another; none for more labels).
            apply_softmax: Softmax over the labels after the activation (models with more than one label).
            convert_to_tensor: A torch tensor instead of a numpy array.

        Returns:
            float32 ``(len(pairs),)`` for a one-label model, ``(len(pairs), num_labels)`` otherwise; one pair gives
            one score (or one row).
        """
        checked, single = _check_pairs(pairs)
        scores = torch.from_numpy(self.activate(self.logits(checked, batch_size, show_progress_bar), activation_fn))
        if self.num_labels == 1:
            scores = scores.squeeze(-1)
        if apply_softmax and scores.ndim > 1:
            scores = torch.softmax(scores, dim=1)
        if single:
            scores = scores[0]
        return scores if convert_to_tensor else scores.numpy()

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        batch_size: int | None = None,
        show_progress_bar: bool = False,
        activation_fn: Callable | None = None,
    ) -> list[dict[str, Any]]:
        """Documents by their score for ``query``, highest first, as ``CrossEncoder.rank``.

        Returns:
            ``[{"corpus_id": index, "score": float(, "text": document)}]``, sorted by score descending (equal
            scores keep document order), the first ``top_k`` when given.

        Raises:
            InputError: a model with more than one label (rank needs one score per pair), or bad input.
        """
        if self.num_labels != 1:
            raise InputError(
                f"rank needs a model with one label; this one has {self.num_labels} ({', '.join(self.labels)}): "
                "use predict on pairs"
            )
        if not isinstance(query, str) or isinstance(documents, str):
            raise InputError("rank takes a query string and a list of document strings")
        scores = self.predict([[query, doc] for doc in documents], batch_size, show_progress_bar, activation_fn)
        results: list[dict[str, Any]] = []
        for index, score in enumerate(np.atleast_1d(scores).tolist()):
            results.append({"corpus_id": index, "score": score})
            if return_documents:
                results[-1]["text"] = documents[index]
        return sorted(results, key=lambda r: r["score"], reverse=True)[:top_k]

    # -- devices ---------------------------------------------------------------------------------------------
    def warmup(self) -> None:
        """Each device's warm-up shapes and one pair's forward pass."""
        ids = self.tokenize_pairs([("warm-up", "warm-up")])
        for worker in self.workers:
            worker.warmup()
            worker.run(ids, normalize=False)
