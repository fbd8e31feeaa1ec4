"""The engine interface: token ids in, sentence embeddings out, on one device.

A backend sees token ids only, already checked at the edge (:func:`minilm_npu.tokenization.check_token_ids`):
non-empty, at most ``max_seq_length`` long, inside the vocabulary. It pads or packs as it
likes, runs the forward pass on its device and the model's pooling and Dense modules (:mod:`.head`). The model's
final Normalize and the copy back to the CPU are the encoder's post stage, shared by every backend.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Callable

import torch

# The names and their checks live in the torch-free config leaf; re-exported here for the engines' users.
from ..config import BACKENDS, DEFAULT_BACKEND, DTYPES, parse_backend, parse_dtype, parse_dtypes
from ..modelfiles import ModelFiles

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DTYPES",
    "TORCH_DTYPES",
    "Backend",
    "create_backend",
    "parse_backend",
    "parse_dtype",
    "parse_dtypes",
]

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
    def embed(self, batch: list[list[int]], prompt_length: int = 0) -> torch.Tensor:
        """Sentence embeddings before the model's final Normalize, float32 ``[len(batch), dimension]`` on
        ``self.device``; ``prompt_length`` leading tokens left out of pooling (passed only for models whose Pooling
        has ``include_prompt=False``)."""

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
