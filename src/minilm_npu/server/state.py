"""What every route needs, kept on ``app.state.server``."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request

from ..contract import Encoder, Reranker
from .batcher import Batcher
from .metrics import ServerMetrics
from .settings import ServerSettings
from .validation import Edge

if TYPE_CHECKING:
    from .token_embedder import TokenEmbedder


class Readiness:
    """Whether the model may answer yet: ``warming up`` (the port is open, the warm-up runs), ``ready`` or
    ``failed``; ``GET /health`` and the embedding routes answer 503 until it is ready.

    Attributes:
        on_failure: Called once when the warm-up fails (the command line stops the server there, so that it exits
            non-zero); None in-process.
    """

    WARMING_UP, READY, FAILED = "warming up", "ready", "failed"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = self.WARMING_UP
        self.detail = "the model is warming up (every shape gear of every device runs once before serving)"
        self.on_failure: Callable[[], None] | None = None

    @property
    def ready(self) -> bool:
        """Whether embeddings may be served."""
        return self.state == self.READY

    def progress(self, detail: str) -> None:
        """What the warm-up is doing now, for the 503 answers."""
        with self._lock:
            if self.state == self.WARMING_UP:
                self.detail = f"the model is warming up: {detail}"

    def set_ready(self) -> None:
        """Serve from now on."""
        with self._lock:
            self.state, self.detail = self.READY, "ready"

    def set_failed(self, why: str) -> None:
        """Never serve; tell the owner (:attr:`on_failure`)."""
        with self._lock:
            self.state, self.detail = self.FAILED, f"warm-up failed: {why}"
        if self.on_failure is not None:
            self.on_failure()


@dataclass(frozen=True)
class Task:
    """One thing ``POST /`` (and SageMaker's ``POST /invocations``) can do, as text-embeddings-inference picks its
    default route by the model's task.

    Attributes:
        name: What it is (``similarity``, ``embed``, ``rerank``).
        matches: Whether a parsed JSON body asks for it (the first task that matches runs).
        model: The request model the body is validated against.
        run: The handler.
    """

    name: str
    matches: Callable[[Any], bool]
    model: type
    run: Callable[[ServerState, Any], Awaitable[bytes]]


@dataclass
class ServerState:
    """The encoder, the limits, the batcher, the metrics and the readiness of one app, and what ``POST /`` may
    do."""

    encoder: Encoder
    settings: ServerSettings
    batcher: Batcher
    metrics: ServerMetrics
    edge: Edge
    tokens: TokenEmbedder
    tasks: tuple[Task, ...] = ()
    readiness: Readiness = field(default_factory=Readiness)
    #: The model when it is a cross-encoder (then also ``encoder``, for what both kinds share: the batcher, the
    #: health probe, /info); None on an embedding server.
    reranker: Reranker | None = None

    @property
    def serves(self) -> str:
        """What this server's model does: ``"rerank"`` (a cross-encoder) or ``"embed"``; one model per server."""
        return "rerank" if self.reranker is not None else "embed"

    @property
    def model_name(self) -> str:
        """The name reported to clients: ``--served-model-name`` or the model's own."""
        return self.settings.served_model_name or str(self.encoder.model_name)

    def model_card(self) -> dict[str, Any]:
        """The served model as OpenAI's model object."""
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "minilm-npu"}


def get_state(request: Request) -> ServerState:
    """The app's :class:`ServerState`."""
    return request.app.state.server
