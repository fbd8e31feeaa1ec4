"""sentence-transformers' ``encode`` surface on :class:`~minilm_npu.encoder.MiniLMEncoder`, in one place.

Code written against ``SentenceTransformer`` passes keyword arguments that the encoder's own ``encode`` does not
know (``convert_to_tensor``, ``precision``, ``output_value``, ``prompt_name``, ...). The encoder hands any such
argument here; :func:`encode` maps them onto the plain pipeline (texts in, float32 vectors out) with the same
meaning, precedence and output types as sentence-transformers 3-6:

* ``convert_to_tensor=True`` wins over ``convert_to_numpy``; both off gives a list of 1-D tensors; any
  ``output_value`` other than ``"sentence_embedding"`` turns both off (a list of per-text tensors).
* ``precision`` quantizes exactly as ``sentence_transformers.quantization.quantize_embeddings`` (same numpy
  operations, so the same bits for the same floats): int8/uint8 buckets are calibrated on the call's own batch,
  so one text alone cannot be quantized to int8/uint8 (the same error as sentence-transformers).
* ``prompt`` is prepended to every text; ``prompt_name`` looks one up in the model's prompts; with neither, the
  model's ``default_prompt_name`` applies. Where the model's Pooling has ``include_prompt=False``, the prompt's
  tokens are left out of pooling (counted as sentence-transformers counts them).

Two deliberate differences, both documented in docs/integrations.md: ``normalize_embeddings=False`` skips the
model's own Normalize module (raw vectors, which the server relies on; in sentence-transformers the module runs
regardless; left out, both return what the model's modules give), and an empty input list gives ``(0, dimension)``
instead of sentence-transformers' shape-``(0,)`` array.

Also here: the rest of the surface people call on a ``SentenceTransformer`` (:class:`SentenceTransformerSurface`),
and sentence-transformers' ``similarity`` functions (cosine, dot, euclidean, manhattan: the model's own choice).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .devices import parse_devices
from .errors import InputError

log = logging.getLogger(__name__)

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")
OUTPUT_VALUES = ("sentence_embedding", "token_embeddings")
#: sentence-transformers arguments this encoder does not take, and what to do instead.
UNSUPPORTED = {
    "truncate_dim": "slice the vectors yourself ([:, :dim]) and normalise them again if you need unit length",
    "pool": "multi-process pools are not needed: MiniLMEncoder(device='cuda:0,cuda:1') spreads work itself",
    "chunk_size": "multi-process chunks are not needed: MiniLMEncoder(device='cuda:0,cuda:1') spreads work itself",
    "task": "this model has no task router",
    "processing_kwargs": "tokenization is fixed to the model's own settings (max_seq_length is settable)",
}
_OPTIONS = ("prompt_name", "prompt", "output_value", "precision", "convert_to_numpy", "convert_to_tensor", "device")


def quantize_embeddings(
    embeddings: np.ndarray | torch.Tensor | list,
    precision: str,
    ranges: np.ndarray | None = None,
    calibration_embeddings: np.ndarray | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Quantize float embeddings: sentence-transformers' ``quantize_embeddings``, step for step.

    Args:
        embeddings: ``[N, dim]`` floats, or a list of ``[tokens, dim]`` matrices (token embeddings), which then
            share one set of int8/uint8 buckets.
        precision: One of :data:`PRECISIONS`.
        ranges: ``[2, dim]`` per-dimension minimum and maximum for int8/uint8; by default taken from
            ``calibration_embeddings``, else from ``embeddings`` themselves.
        calibration_embeddings: Representative embeddings to take the ranges from.

    Returns:
        float32, int8 or uint8 arrays (binary precisions pack 8 dimensions per byte), or a list of them.

    Raises:
        InputError: an unknown precision, integer input, or int8/uint8 ranges asked of a single embedding.
    """
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not supported; choose one of: {', '.join(PRECISIONS)}")
    if isinstance(embeddings, torch.Tensor):
        embeddings = _to_numpy(embeddings)
    elif isinstance(embeddings, list):
        if not embeddings:
            return []
        embeddings = [_to_numpy(e) if isinstance(e, torch.Tensor) else e for e in embeddings]
        if isinstance(embeddings[0], np.ndarray) and embeddings[0].ndim == 2:
            if precision.endswith("int8") and ranges is None:  # calibrate once: every matrix shares the buckets
                data = np.concatenate(embeddings, axis=0) if calibration_embeddings is None else calibration_embeddings
                if len(data):
                    ranges = _quantization_ranges(data, precision, calibration_embeddings)
            return [quantize_embeddings(m, precision, ranges, calibration_embeddings) for m in embeddings]
        embeddings = np.array(embeddings)
    if embeddings.dtype in (np.uint8, np.int8):
        raise InputError("embeddings to quantize must be float rather than int8 or uint8")
    if embeddings.ndim == 2 and embeddings.shape[0] == 0:
        dim = embeddings.shape[1]
        if precision.endswith("int8"):
            return np.zeros((0, dim), dtype=np.int8 if precision == "int8" else np.uint8)
        if precision.endswith("binary"):
            return np.zeros((0, (dim + 7) // 8), dtype=np.int8 if precision == "binary" else np.uint8)
    if precision == "float32":
        return embeddings.astype(np.float32)
    if precision.endswith("int8"):
        if ranges is None:
            ranges = _quantization_ranges(embeddings, precision, calibration_embeddings)
        ranges = ranges.astype(np.float32, copy=False)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((embeddings - starts) / steps), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    if precision == "binary":
        return (np.packbits(embeddings > 0, axis=-1) - 128).astype(np.int8)
    return np.packbits(embeddings > 0, axis=-1)  # ubinary


def _quantization_ranges(
    embeddings: np.ndarray, precision: str, calibration_embeddings: np.ndarray | None
) -> np.ndarray:
    if calibration_embeddings is None:
        if embeddings.ndim == 1 or embeddings.shape[0] == 1:
            raise InputError(
                f"cannot compute {precision} quantization ranges from a single embedding; encode a "
                "representative batch, or quantize with quantize_embeddings(..., ranges=...)"
            )
        if embeddings.shape[0] < 100:
            log.warning(
                "computing %s quantization buckets from only %d embeddings; ranges from more (or from "
                "calibration embeddings) are more stable",
                precision,
                len(embeddings),
            )
        calibration_embeddings = embeddings
    return np.vstack((np.min(calibration_embeddings, axis=0), np.max(calibration_embeddings, axis=0)))


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).cpu().numpy()


def _as_float_tensor(a: Any) -> torch.Tensor:
    """Lists (of tensors or arrays) stacked, arrays viewed, sub-float32 floats widened: as sentence-transformers."""
    if isinstance(a, list):
        if a and all(isinstance(x, torch.Tensor) for x in a):
            a = torch.stack(a)
        elif a and all(isinstance(x, np.ndarray) for x in a):
            a = torch.stack([_from_numpy(x) for x in a])
        else:
            a = torch.tensor(a)
    elif isinstance(a, np.ndarray):
        a = _from_numpy(a)
    elif not isinstance(a, torch.Tensor):
        a = torch.tensor(a)
    if torch.is_floating_point(a) and torch.finfo(a.dtype).bits < 32:
        a = a.float()
    return a


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a) if a.flags.writeable else torch.tensor(a)


def cos_sim(a: Any, b: Any) -> torch.Tensor:
    """``[len(a), len(b)]`` cosine similarities (sentence-transformers' ``util.cos_sim``)."""
    a, b = _as_float_tensor(a), _as_float_tensor(b)
    a, b = (a.unsqueeze(0) if a.dim() == 1 else a), (b.unsqueeze(0) if b.dim() == 1 else b)
    return torch.mm(F.normalize(a, p=2, dim=-1), F.normalize(b, p=2, dim=-1).transpose(0, 1))


def pairwise_cos_sim(a: Any, b: Any) -> torch.Tensor:
    """``cos_sim(a[i], b[i])`` for each ``i`` (sentence-transformers' ``util.pairwise_cos_sim``)."""
    a, b = _as_float_tensor(a), _as_float_tensor(b)
    return (F.normalize(a, p=2, dim=-1) * F.normalize(b, p=2, dim=-1)).sum(dim=-1)


def _batch(a: Any) -> torch.Tensor:
    a = _as_float_tensor(a)
    return a.unsqueeze(0) if a.dim() == 1 else a


#: sentence-transformers' similarity functions by name: ``(every pair, pairwise)``, as its ``util`` computes them.
SIMILARITIES = {
    "cosine": (cos_sim, pairwise_cos_sim),
    "dot": (
        lambda a, b: torch.mm(_batch(a), _batch(b).transpose(0, 1)),
        lambda a, b: (_as_float_tensor(a) * _as_float_tensor(b)).sum(dim=-1),
    ),
    "euclidean": (
        lambda a, b: -torch.cdist(_batch(a), _batch(b), p=2.0),
        lambda a, b: -torch.linalg.vector_norm(_as_float_tensor(a) - _as_float_tensor(b), dim=-1),
    ),
    "manhattan": (
        lambda a, b: -torch.cdist(_batch(a), _batch(b), p=1.0),
        lambda a, b: -torch.sum(torch.abs(_as_float_tensor(a) - _as_float_tensor(b)), dim=-1),
    ),
}


def _check_options(options: dict[str, Any]) -> None:
    for name in options:
        if name in UNSUPPORTED:
            raise InputError(f"MiniLMEncoder.encode() does not support {name!r}: {UNSUPPORTED[name]}")
        if name not in _OPTIONS:
            raise InputError(
                f"MiniLMEncoder.encode() got an unexpected keyword argument {name!r}; it takes "
                f"sentences, batch_size, normalize_embeddings, show_progress_bar, {', '.join(_OPTIONS)}"
            )


def _resolve_prompt(
    prompts: dict[str, str], prompt: str | None, prompt_name: str | None, default_name: str | None = None
) -> str | None:
    if prompt is None and prompt_name is None and default_name is not None:
        return prompts.get(default_name)
    if prompt is None and prompt_name is not None:
        if prompt_name not in prompts:
            raise InputError(
                f"prompt name {prompt_name!r} is not one of this model's prompts {sorted(prompts)}; "
                "pass the text itself as prompt=..."
            )
        return prompts[prompt_name]
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, not {type(prompt).__name__}")
    if prompt is not None and prompt_name is not None:
        log.warning("both prompt and prompt_name given: prompt_name %r is ignored in favour of prompt", prompt_name)
    return prompt


def _output_device(encoder, device: Any) -> torch.device:
    """The encoder's first device, or the one ``device`` names if the encoder runs there."""
    if device is None:
        return encoder.device
    if isinstance(device, (list, tuple)):
        raise InputError(
            "device lists (multi-process encoding) are not needed: build "
            "MiniLMEncoder(device='cuda:0,cuda:1') and it spreads the work over them itself"
        )
    wanted = parse_devices(device)
    if any(d not in encoder.devices for d in wanted):
        runs_on = ",".join(str(d) for d in encoder.devices)
        raise InputError(
            f"this encoder runs on {runs_on}, chosen when it was built; for device={str(device)!r} "
            f"build MiniLMEncoder(device={str(device)!r})"
        )
    return wanted[0]


def encode(
    encoder,
    sentences: str | Sequence[str],
    batch_size: int | None,
    normalize_embeddings: bool | None,
    show_progress_bar: bool | None,
    **options: Any,
) -> Any:
    """``MiniLMEncoder.encode`` with sentence-transformers' keyword arguments (see the module docstring).

    Returns:
        What ``SentenceTransformer.encode`` returns for the same arguments.

    Raises:
        InputError: an argument this encoder does not take (named), or a value it cannot honour.
    """
    _check_options(options)
    output_value = options.get("output_value", "sentence_embedding")
    precision = options.get("precision", "float32")
    convert_to_tensor = bool(options.get("convert_to_tensor", False))
    convert_to_numpy = bool(options.get("convert_to_numpy", True)) and not convert_to_tensor
    if output_value not in OUTPUT_VALUES:
        raise InputError(
            f"output_value {output_value!r} is not supported; choose one of: {', '.join(OUTPUT_VALUES)}"
            + (
                " (sentence-transformers' raw per-batch feature dicts are not reproduced)"
                if output_value is None
                else ""
            )
        )
    if output_value != "sentence_embedding":
        convert_to_tensor = convert_to_numpy = False
    if precision not in PRECISIONS:
        raise InputError(f"precision {precision!r} is not supported; choose one of: {', '.join(PRECISIONS)}")
    if show_progress_bar is None:  # sentence-transformers' rule: show it when logging is verbose
        show_progress_bar = log.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
    prompt = _resolve_prompt(
        encoder.prompts, options.get("prompt"), options.get("prompt_name"), encoder.model_files.default_prompt_name
    )
    device = _output_device(encoder, options.get("device"))
    single = isinstance(sentences, str)
    texts = [sentences] if single else encoder._check_texts(sentences)
    if prompt:
        texts = [prompt + text for text in texts]

    if output_value == "token_embeddings":
        result = [t.to(device) for t in encoder.token_embeddings(texts, batch_size, show_progress_bar)]
        if precision != "float32" and result:
            result = quantize_embeddings(result, precision)
        return result[0] if single else result

    prompt_length = encoder.tokenizer.prompt_length(prompt) if prompt else 0
    vectors = encoder.encode_texts(texts, batch_size, normalize_embeddings, show_progress_bar, prompt_length)
    quantized = precision != "float32" and len(vectors) > 0
    if quantized:  # the whole call's batch, as sentence-transformers: int8/uint8 buckets come from it
        vectors = quantize_embeddings(vectors, precision)
    if convert_to_numpy:
        return vectors[0] if single else vectors
    # As sentence-transformers: float32 results stay on the compute device, quantized ones come from numpy (CPU).
    tensor = torch.from_numpy(vectors) if quantized else torch.from_numpy(vectors).to(device)
    if single:
        return tensor[0]
    return tensor if convert_to_tensor else list(tensor)


class SentenceTransformerSurface:
    """The ``SentenceTransformer`` methods people call besides ``encode``, for the encoder to inherit.

    Expects ``self.encode``, ``self.dimension``, ``self.tokenizer`` and ``self.model_files``.
    """

    @property
    def similarity_fn_name(self) -> str:
        """The model's similarity function (``config_sentence_transformers.json``; cosine when it names none)."""
        return self.model_files.similarity_fn_name

    @property
    def prompts(self) -> dict[str, str]:
        """Named prompts: the model's own, over sentence-transformers' empty ``query``/``document`` defaults."""
        return self.model_files.prompts

    @property
    def max_seq_length(self) -> int:
        """Token limit, special tokens included; the model's own (256) unless lowered by assignment.

        Raises:
            InputError: on assignment of a value outside ``2 .. the model's limit``.
        """
        return self.tokenizer.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        limit = self.model_files.max_seq_length
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= limit:
            raise InputError(
                f"max_seq_length must be an integer from 2 to {limit} (the model was trained on at "
                f"most {limit} tokens), not {value!r}"
            )
        self.tokenizer.set_max_seq_length(value)

    def get_embedding_dimension(self) -> int:
        """The embedding dimension (384 for all-MiniLM-L6-v2)."""
        return self.dimension

    def get_sentence_embedding_dimension(self) -> int:
        """The embedding dimension (384 for all-MiniLM-L6-v2); sentence-transformers' name before 6.0."""
        return self.dimension

    def get_max_seq_length(self) -> int:
        """Same as :attr:`max_seq_length` (sentence-transformers' older accessor)."""
        return self.max_seq_length

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """The model's similarity (cosine unless it names another) of every pair: ``[N1, N2]`` tensor, as
        ``SentenceTransformer.similarity``."""
        return SIMILARITIES[self.similarity_fn_name][0](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """The model's similarity of ``embeddings1[i]`` and ``embeddings2[i]``: ``[N]`` tensor."""
        return SIMILARITIES[self.similarity_fn_name][1](embeddings1, embeddings2)

    def encode_query(self, sentences: str | Sequence[str], **kwargs: Any) -> Any:
        """:meth:`encode` with the model's ``query`` prompt unless a prompt is given (empty for all-MiniLM-L6-v2)."""
        if kwargs.get("prompt") is None and kwargs.get("prompt_name") is None and "query" in self.prompts:
            kwargs["prompt_name"] = "query"
        return self.encode(sentences, **kwargs)

    def encode_document(self, sentences: str | Sequence[str], **kwargs: Any) -> Any:
        """:meth:`encode` with the model's ``document``/``passage``/``corpus`` prompt (empty for all-MiniLM-L6-v2)."""
        if kwargs.get("prompt") is None and kwargs.get("prompt_name") is None:
            name = next((n for n in ("document", "passage", "corpus") if n in self.prompts), None)
            if name is not None:
                kwargs["prompt_name"] = name
        return self.encode(sentences, **kwargs)
