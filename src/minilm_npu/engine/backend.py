"""The engine interface: token ids in, pooled vectors out, on one device.

A backend sees token ids only (validation happens once, at the edge, in the encoder). It pads or packs as it
likes, runs the forward pass on its device and pools (mean or CLS, as the model's files say). Normalisation and
the copy back to the CPU are the encoder's post stage, shared by every backend.
"""

from __future__ import annotations

import importlib
from typing import Protocol

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


class Backend(Protocol):
    """What an engine provides to the encoder."""

    name: str
    device: torch.device
    dtype: str

    def embed(self, batch: list[list[int]]) -> torch.Tensor:
        """Pooled, not normalised, float32 ``[len(batch), hidden]`` on ``self.device``."""


def create_backend(name: str, model_files: ModelFiles, device: torch.device, dtype: str) -> Backend:
    """Build backend ``name`` for one device.

    Raises:
        InputError: unknown backend or dtype, or a dtype this backend/device cannot run.
    """
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    module_name, class_name = BACKENDS[name].split(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(model_files, device, dtype)
