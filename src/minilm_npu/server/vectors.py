"""Per-request post-processing of raw pooled vectors: ``dimensions``, normalisation, wire encoding, JSON bodies."""

from __future__ import annotations

import base64
import json

import numpy as np
import orjson

_EPS = 1e-12  # as torch.nn.functional.normalize: a zero vector stays zero instead of becoming NaN


def finish(raw: np.ndarray, dimensions: int | None = None, normalize: bool = True) -> np.ndarray:
    """Truncate to ``dimensions`` (if given) and L2-normalise (if asked), in float32.

    Truncating and then re-normalising is what TEI does for ``dimensions``: the result is a unit vector again,
    but it carries less information than the full one (all-MiniLM-L6-v2 is not Matryoshka-trained), so
    similarity quality drops as ``dimensions`` shrinks.
    """
    vectors = raw[:, :dimensions] if dimensions is not None else raw
    vectors = np.asarray(vectors, dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, _EPS)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def to_base64(vector: np.ndarray) -> str:
    """Little-endian float32 bytes in base64, as the OpenAI API's ``encoding_format: base64`` sends them."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def json_body(payload: object, finite: bool = True) -> bytes:
    """``payload`` as compact JSON bytes.

    Floats are written as Python writes them — the shortest text that reads back as the same double — through
    orjson, ~9x faster than the standard library on vectors (orjson spells exponents ``1e-7``, not ``1e-07``;
    every JSON parser reads the same number). Vectors go in as ``tolist()`` doubles, never as float32 arrays
    (orjson would print float32's shortest text, a different number once read back as a double).

    Args:
        payload: JSON-able Python values.
        finite: False when the payload may hold NaN or infinity (a broken model): those go through the standard
            library, which writes them as ``NaN``/``Infinity`` where orjson would write ``null``.
    """
    if not finite:
        return json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return orjson.dumps(payload)
