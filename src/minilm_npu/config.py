"""The encoder's settings in one immutable object, each default written once, and the dtype/backend names.

Settings are checked here, once (:func:`parse_dtype`, :func:`parse_backend`; the device string when the encoder is
built). Built from the command line in one place (:func:`minilm_npu.cli.common.encoder_config`) or by hand, and
passed whole to the encoder, the server, the corpus engines (Ray actors included) and ``verify``.

A leaf, like :mod:`minilm_npu.errors`: it imports no torch, so the command line builds its parser (choices and
defaults included) without loading one. The engines map these names to torch dtypes and classes
(:mod:`minilm_npu.engine.backend`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InputError

#: The dtypes an engine may be asked for: float32 is exact; the others trade accuracy (measured by ``accuracy``).
DTYPES = ("float32", "bfloat16", "float16", "int8")

#: name -> "module:class". "packed" is the fast engine, "transformers" the reference port's exact method.
BACKENDS = {
    "packed": "minilm_npu.engine.packed:PackedBackend",
    "transformers": "minilm_npu.engine.reference:TransformersBackend",
}
DEFAULT_BACKEND = "packed"

#: Default cap on real (unpadded) tokens per forward pass: large enough to keep a card busy, small enough that
#: activations of a 6-layer, 384-wide model stay well under 100 MB.
DEFAULT_MAX_BATCH_TOKENS = 16384


def parse_dtype(dtype: object) -> str:
    """The one dtype check: a name from :data:`DTYPES`, or InputError listing them."""
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return str(dtype)


def parse_dtypes(dtypes: str | Sequence[str]) -> list[str]:
    """Several dtypes: ``"all"``, a comma list (``"float32, int8"``) or a list of names, each checked by
    :func:`parse_dtype`; duplicates dropped, order kept.

    Raises:
        InputError: an unknown name, or none at all.
    """
    if isinstance(dtypes, str):
        if dtypes.strip().lower() == "all":
            return list(DTYPES)
        dtypes = dtypes.split(",")
    names = [str(name).strip().lower() for name in dtypes if str(name).strip()]
    if not names:
        raise InputError(f"unknown dtype (none given); choose from {', '.join(DTYPES)} or all")
    return list(dict.fromkeys(parse_dtype(name) for name in names))


def parse_backend(backend: object) -> str:
    """The one backend check: a name from :data:`BACKENDS` (None: :data:`DEFAULT_BACKEND`), or InputError."""
    backend = DEFAULT_BACKEND if backend is None else backend
    if backend not in BACKENDS:
        raise InputError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    return str(backend)


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


def config_from_arguments(config: EncoderConfig | None, **settings: Any) -> EncoderConfig:
    """The config of an encoder's (or reranker's) constructor: ``config`` whole, or the settings given (None: left
    out, the default); a device may be any object whose ``str`` is a device string (``torch.device``).

    Raises:
        InputError: both ``config`` and settings, or a bad setting.
    """
    given = {name: value for name, value in settings.items() if value is not None}
    if config is not None and given:
        raise InputError(f"pass either config or settings ({', '.join(given)}), not both")
    if "device" in given:
        given["device"] = str(given["device"])
    return config or EncoderConfig(**given)
