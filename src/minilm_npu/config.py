"""The encoder's settings in one immutable object, each default written once.

Settings are checked here, once (:func:`~minilm_npu.engine.backend.parse_dtype`,
:func:`~minilm_npu.engine.backend.parse_backend`; the device string when the encoder is built). Built from the
command line in one place (:func:`minilm_npu.cli.common.encoder_config`) or by hand, and passed
whole to the encoder, the server, the corpus engines (Ray actors included) and ``verify``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .engine.backend import DEFAULT_BACKEND, parse_backend, parse_dtype
from .errors import InputError

#: Default cap on real (unpadded) tokens per forward pass: large enough to keep a card busy, small enough that
#: activations of a 6-layer, 384-wide model stay well under 100 MB.
DEFAULT_MAX_BATCH_TOKENS = 16384


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, not {value!r}")


@dataclass(frozen=True)
class EncoderConfig:
    """How to build and run an encoder.

    Attributes:
        model_path: A local sentence-transformers directory, a hub id, or None for the bundled official model.
        device: One string: ``"auto"`` (npu -> cuda -> mps -> cpu), ``"cpu"``, ``"npu:0"``, ``"cuda:1"``, or a
            comma-separated list (``"npu:0,npu:1"``) for one worker per device. Parsed by
            :func:`minilm_npu.devices.parse_devices` when the encoder is built.
        dtype: ``"float32"`` (exact), ``"bfloat16"``, ``"float16"`` or ``"int8"``.
        backend: ``"packed"`` (the fast engine) or ``"transformers"`` (the reference port's method).
        max_batch_tokens: Most real tokens in one forward pass.
        batch_size: Most sequences in one forward pass (``encode``'s default, and the server's sequence cap).

    Raises:
        InputError: an unknown dtype or backend, or a size that is not a positive integer.
    """

    model_path: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    backend: str = DEFAULT_BACKEND
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    batch_size: int = 32

    def __post_init__(self) -> None:
        parse_dtype(self.dtype)
        object.__setattr__(self, "backend", parse_backend(self.backend))
        _positive_int("max_batch_tokens", self.max_batch_tokens)
        _positive_int("batch_size", self.batch_size)
        if not isinstance(self.device, str) or not self.device.strip():
            raise InputError(f"device must be a device string such as 'auto', 'cpu' or 'npu:0', not {self.device!r}")

    def replace(self, **changes: Any) -> EncoderConfig:
        """A copy with some settings changed (checked again)."""
        return dataclasses.replace(self, **changes)
