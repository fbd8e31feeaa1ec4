"""Where the framework adapters get their vectors: one local encoder, or a running ``minilm-npu serve`` by URL.

Both give normalised float32 vectors as lists of Python floats (what the frameworks store), in input order, and
an async form that never blocks the event loop: the local encoder runs in a worker thread, the server is called
with ``httpx.AsyncClient``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Protocol

#: The server's default ``--max-client-batch-size``: requests are split so none carries more texts than this.
SERVER_BATCH = 256


class ServerError(RuntimeError):
    """``minilm-npu serve`` answered with an error (or could not be reached); the message says which and why."""


class EmbeddingSource(Protocol):
    """Texts in, one normalised vector per text out."""

    model_name: str

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Vectors for ``texts``, in order."""

    async def aembed(self, texts: list[str]) -> list[list[float]]:
        """The same, awaitable."""


class LocalSource:
    """One :class:`~minilm_npu.encoder.MiniLMEncoder` in this process.

    Args:
        encoder: The encoder to use; by default one is built from ``model_path`` and ``device``.
        model_path: Model for the default encoder (None: the bundled all-MiniLM-L6-v2).
        device: Device string for the default encoder.
        batch_size: Texts per forward pass.
    """

    def __init__(self, encoder: Any = None, model_path: str | None = None, device: str = "auto", batch_size: int = 32):
        if encoder is None:
            from ..encoder import MiniLMEncoder

            encoder = MiniLMEncoder(model_path, device=device)
        self.encoder, self.batch_size = encoder, batch_size
        self.model_name = encoder.model_name

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Vectors for ``texts``, in order."""
        if not texts:
            return []
        return self.encoder.encode(list(texts), batch_size=self.batch_size).tolist()

    async def aembed(self, texts: list[str]) -> list[list[float]]:
        """The same in a worker thread (the encoder serialises work per device itself)."""
        return await asyncio.to_thread(self.embed, texts)


class RemoteSource:
    """A running ``minilm-npu serve``, through its OpenAI-compatible ``POST /v1/embeddings``.

    Args:
        url: The server's base URL, e.g. ``http://127.0.0.1:8080``.
        api_key: Sent as ``Authorization: Bearer``; defaults to ``$MINILM_NPU_API_KEY`` (the server's own variable).
        timeout: Seconds per request.
        batch_size: Most texts per request (the server refuses more than its ``--max-client-batch-size``).
    """

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 60.0, batch_size: int = SERVER_BATCH):
        import httpx  # an optional dependency: only the by-URL mode needs it

        self._httpx = httpx
        self.url = url.rstrip("/") + "/v1/embeddings"
        api_key = api_key if api_key is not None else os.environ.get("MINILM_NPU_API_KEY")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout, self.batch_size = timeout, batch_size
        self.model_name = "sentence-transformers/all-MiniLM-L6-v2"  # replaced by the served name on first answer

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        return [list(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]

    def _vectors(self, response: Any) -> list[list[float]]:
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise ServerError(f"{self.url} answered {response.status_code}: {message}")
        body = response.json()
        self.model_name = body.get("model") or self.model_name
        return [item["embedding"] for item in sorted(body["data"], key=lambda item: item["index"])]

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Vectors for ``texts``, in order, one request per :attr:`batch_size` texts.

        Raises:
            ServerError: an error answer, or no answer.
        """
        out: list[list[float]] = []
        with self._httpx.Client(timeout=self.timeout, headers=self.headers) as client:
            for chunk in self._chunks(texts):
                try:
                    response = client.post(self.url, json={"input": chunk, "encoding_format": "float"})
                except self._httpx.HTTPError as err:
                    raise ServerError(f"cannot reach {self.url}: {err}") from err
                out += self._vectors(response)
        return out

    async def aembed(self, texts: list[str]) -> list[list[float]]:
        """The same with ``httpx.AsyncClient``."""
        out: list[list[float]] = []
        async with self._httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as client:
            for chunk in self._chunks(texts):
                try:
                    response = await client.post(self.url, json={"input": chunk, "encoding_format": "float"})
                except self._httpx.HTTPError as err:
                    raise ServerError(f"cannot reach {self.url}: {err}") from err
                out += self._vectors(response)
        return out


def make_source(
    encoder: Any = None,
    url: str | None = None,
    api_key: str | None = None,
    model_path: str | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    timeout: float = 60.0,
) -> LocalSource | RemoteSource:
    """A :class:`RemoteSource` when ``url`` is given, else a :class:`LocalSource`: what both adapters take.

    Args:
        encoder: A :class:`~minilm_npu.encoder.MiniLMEncoder` to use; by default one is built.
        url: Base URL of a running ``minilm-npu serve`` instead of a local encoder.
        api_key: For a server started with an API key (default ``$MINILM_NPU_API_KEY``).
        model_path: Model for the default encoder (None: the bundled one).
        device: Device string for the default encoder.
        batch_size: Texts per forward pass locally (default 32) or per request to a server (default 256).
        timeout: Seconds per server request.

    Raises:
        InputError: both an encoder and a URL.
    """
    if url is not None:
        if encoder is not None:
            from ..errors import InputError

            raise InputError("give an encoder or a server URL, not both")
        return RemoteSource(url, api_key=api_key, timeout=timeout, batch_size=batch_size or SERVER_BATCH)
    return LocalSource(encoder, model_path=model_path, device=device, batch_size=batch_size or 32)
