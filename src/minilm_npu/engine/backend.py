"""The engine interface: token ids in, pooled vectors out, on one device.

A backend sees token ids only, already checked at the edge (:func:`minilm_npu.tokenization.check_token_ids`):
non-empty, at most ``max_seq_length`` long, inside the vocabulary. It pads or packs as it
likes, runs the forward pass on its device and pools (mean or CLS, as the model's files say). Normalisation and
the copy back to the CPU are the encoder's post stage, shared by every backend.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable, Sequence

import torch

from ..errors import InputError
from ..modelfiles import ModelFiles

DTYPES = ("float32", "bfloat16", "float16", "int8")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: name -> "module:class". "packed" is the fast engine, "transformers" the reference port's exact method.
BACKENDS = {
    "packed": "minilm_npu.engine.packed:PackedBackend",
    "transformers": "minilm_npu.engine.reference:TransformersBackend",
}
DEFAULT_BACKEND = "packed"


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


class Backend(abc.ABC):
    """What an engine provides to the encoder; every engine (and every test fake) subclasses it.

    A subclass sets ``name`` (class attribute), ``device`` and ``dtype``, and implements :meth:`embed` and
    :meth:`token_embeddings`. The optional parts have defaults here: not shareable, nothing to warm up, no
    device-dependent choices to report.

    Attributes:
        name: The backend's name in :data:`BACKENDS`.
        device: Where the forward pass runs.
        dtype: One of :data:`DTYPES`.
        shareable: ``embed`` may run from several threads at once on this one object, so one CPU can run a call's
            batches side by side without a second copy of the model (the lanes of
            :class:`~minilm_npu.engine.cpu_execution.CpuExecution`).
    """

    name: str
    device: torch.device
    dtype: str
    shareable: bool = False

    @abc.abstractmethod
    def embed(self, batch: list[list[int]]) -> torch.Tensor:
        """Pooled, not normalised, float32 ``[len(batch), hidden]`` on ``self.device``."""

    @abc.abstractmethod
    def token_embeddings(self, batch: list[list[int]]) -> list[torch.Tensor]:
        """Last-layer hidden states before pooling, float32 ``[len(ids), hidden]`` per sequence."""

    def warmup(self) -> None:
        """Run the device's warm-up shapes once (allocation, kernel choice, graph builds); nothing by default."""
        return None

    def choices(self) -> dict[str, str]:
        """What this engine picked on its device and why (for ``minilm-npu check`` and reports); none by default."""
        return {}


def create_backend(name: str, model_files: ModelFiles, device: torch.device, dtype: str) -> Backend:
    """Build backend ``name`` for one device.

    Raises:
        InputError: unknown backend or dtype, or a dtype this backend/device cannot run.
    """
    module_name, class_name = BACKENDS[parse_backend(name)].split(":")
    parse_dtype(dtype)
    backend_class: Callable[[ModelFiles, torch.device, str], Backend] = getattr(
        importlib.import_module(module_name), class_name
    )
    return backend_class(model_files, device, dtype)
