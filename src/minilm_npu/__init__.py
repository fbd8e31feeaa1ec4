"""minilm-npu: exact, fast all-MiniLM-L6-v2 sentence embeddings on Ascend NPUs, CUDA GPUs and CPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["EncoderConfig", "MiniLMEncoder", "Reranker", "__version__"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from .config import EncoderConfig
    from .encoder import MiniLMEncoder
    from .reranker import Reranker


def __getattr__(name: str):
    # Lazy, so that importing a sub-module (the command line, above all) does not import torch: ``serve`` sets
    # the OpenMP environment, which the OpenMP runtime reads once, when torch loads it.
    if name == "MiniLMEncoder":
        from .encoder import MiniLMEncoder

        return MiniLMEncoder
    if name == "Reranker":
        from .reranker import Reranker

        return Reranker
    if name == "EncoderConfig":
        from .config import EncoderConfig

        return EncoderConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
