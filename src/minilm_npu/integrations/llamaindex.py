"""LlamaIndex: ``MiniLMEmbedding``, a ``llama_index.core.embeddings.BaseEmbedding`` over minilm-npu.

The one-line swap for ``HuggingFaceEmbedding(model_name="sentence-transformers/all-MiniLM-L6-v2")``::

    from llama_index.core import Settings
    from minilm_npu.integrations.llamaindex import MiniLMEmbedding
    Settings.embed_model = MiniLMEmbedding()                             # the bundled model, in this process
    Settings.embed_model = MiniLMEmbedding(url="http://127.0.0.1:8080")  # or a running `minilm-npu serve`

Needs ``pip install 'minilm-npu[llamaindex]'``.
"""

from __future__ import annotations

from typing import Any

try:
    from llama_index.core.bridge.pydantic import PrivateAttr
    from llama_index.core.embeddings import BaseEmbedding
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("MiniLMEmbedding needs llama-index-core: pip install 'minilm-npu[llamaindex]'") from err

from .source import make_source


class MiniLMEmbedding(BaseEmbedding):
    """Normalised all-MiniLM-L6-v2 vectors for LlamaIndex, from one encoder or from a server by URL.

    Args: those of :func:`~minilm_npu.integrations.source.make_source` (``encoder`` or ``url``, ``api_key``,
    ``model_path``, ``device``, ``timeout``), plus ``embed_batch_size`` (texts LlamaIndex hands over per call) and
    other ``BaseEmbedding`` fields (``callback_manager``, ...).
    """

    _source: Any = PrivateAttr()

    def __init__(
        self,
        encoder: Any = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        model_path: str | None = None,
        device: str = "auto",
        embed_batch_size: int = 32,
        timeout: float = 60.0,
        **kwargs: Any,
    ):
        source = make_source(encoder, url, api_key, model_path, device, None, timeout)
        kwargs.setdefault("model_name", source.model_name)
        super().__init__(embed_batch_size=embed_batch_size, **kwargs)
        self._source = source

    @classmethod
    def class_name(cls) -> str:
        return "MiniLMEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._source.embed([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._source.embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._source.embed(list(texts))

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._source.aembed([query]))[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._source.aembed([text]))[0]

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await self._source.aembed(list(texts))
