"""LangChain: ``MiniLMEmbeddings``, a ``langchain_core.embeddings.Embeddings`` over minilm-npu.

The one-line swap for ``HuggingFaceEmbeddings(model_name="sentence-transformers/all-MiniLM-L6-v2")``::

    from minilm_npu.integrations.langchain import MiniLMEmbeddings
    embeddings = MiniLMEmbeddings()                              # the bundled model, in this process
    embeddings = MiniLMEmbeddings(url="http://127.0.0.1:8080")   # or a running `minilm-npu serve`

Needs ``pip install 'minilm-npu[langchain]'``.
"""

from __future__ import annotations

from typing import Any

try:
    from langchain_core.embeddings import Embeddings
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("MiniLMEmbeddings needs langchain-core: pip install 'minilm-npu[langchain]'") from err

from .source import make_source


class MiniLMEmbeddings(Embeddings):
    """Normalised all-MiniLM-L6-v2 vectors for LangChain, from one encoder or from a server by URL.

    Args: those of :func:`~minilm_npu.integrations.source.make_source` (``encoder`` or ``url``, ``api_key``,
    ``model_path``, ``device``, ``batch_size``, ``timeout``).
    """

    def __init__(
        self,
        encoder: Any = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        model_path: str | None = None,
        device: str = "auto",
        batch_size: int | None = None,
        timeout: float = 60.0,
    ):
        self.source = make_source(encoder, url, api_key, model_path, device, batch_size, timeout)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, in order."""
        return self.source.embed(list(texts))

    def embed_query(self, text: str) -> list[float]:
        """The query's vector (the same model as the documents: this model has no query prompt)."""
        return self.source.embed([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, without blocking the event loop."""
        return await self.source.aembed(list(texts))

    async def aembed_query(self, text: str) -> list[float]:
        """The query's vector, without blocking the event loop."""
        return (await self.source.aembed([text]))[0]
