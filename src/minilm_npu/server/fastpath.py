"""The embedding routes straight from ASGI to their handlers, beside FastAPI.

``POST /v1/embeddings``, ``/embeddings``, ``/embed``, ``/`` and ``/invocations`` carry nearly all of a server's
traffic, and a short request's own work (tokenizing a sentence, rendering one vector) is tens of microseconds;
Starlette's routing and FastAPI's request handling around it cost several times that on every request. Here the
body is validated by pydantic-core straight from the JSON bytes (``handlers.parse_body``: the same request
models, so the same rules and the same messages) and handed to the same handlers the FastAPI routes call; the
answer is the same either way (tests compare the two). Everything else, and these paths with other methods, goes
on to FastAPI. The edge middlewares (metrics, API key, body limit) wrap both.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from pydantic import BaseModel, ValidationError

from . import handlers, rerank
from .errors import ApiError, describe_validation, error_body
from .middleware import ASGIApp, Receive, Scope, Send
from .schemas import OpenAIEmbeddingRequest, TEIEmbedRequest
from .schemas_rerank import RerankRequest, TEIRerankRequest
from .state import ServerState

log = logging.getLogger(__name__)
Handler = Callable[[ServerState, bytes], Awaitable[bytes]]
_JSON_HEADERS = [(b"content-type", b"application/json")]


def _validated(model: type[BaseModel], handler: Callable[[ServerState, BaseModel], Awaitable[bytes]]) -> Handler:
    async def run(state: ServerState, raw: bytes) -> bytes:
        return await handler(state, handlers.parse_body(model, raw))

    return run


#: The routes served here, and how.
ROUTES: dict[str, Handler] = {
    "/v1/embeddings": _validated(OpenAIEmbeddingRequest, handlers.embed_openai),
    "/embeddings": _validated(OpenAIEmbeddingRequest, handlers.embed_openai),
    "/embed": _validated(TEIEmbedRequest, handlers.embed_tei),
    "/": handlers.run_task,
    "/invocations": handlers.run_task,
}
#: A reranking server's routes served here.
RERANK_ROUTES: dict[str, Handler] = {
    "/rerank": _validated(TEIRerankRequest, rerank.rerank_tei),
    "/v1/rerank": _validated(RerankRequest, rerank.rerank_v1),
    "/": handlers.run_task,
    "/invocations": handlers.run_task,
}


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client went away first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class FastPath:
    """ASGI middleware (innermost): serves :data:`ROUTES` for POST, passes everything else to ``app``.

    Args:
        app: The FastAPI app.
        state: The app's state.
        routes: The routes served here (:data:`ROUTES`, or :data:`RERANK_ROUTES` on a reranking server).
    """

    def __init__(self, app: ASGIApp, state: ServerState, routes: dict[str, Handler] | None = None):
        self.app = app
        self.state = state
        self.routes = ROUTES if routes is None else routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if handler is None:
            await self.app(scope, receive, send)
            return
        raw = await _read_body(receive)
        if raw is None:
            return
        status = 200
        try:
            content = await handler(self.state, raw)
        except ApiError as err:
            status, content = err.status, self._error(scope, err.message, err.kind, err.param)
        except ValidationError as err:
            message, param = describe_validation(err.errors())
            status, content = 422, self._error(scope, message, "validation", param)
        except Exception as err:  # noqa: BLE001 - the traceback goes to the log, the client gets one line
            log.exception("unhandled error on %s", scope["path"])
            status, content = 500, self._error(scope, f"internal error: {type(err).__name__}", "backend")
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*_JSON_HEADERS, (b"content-length", str(len(content)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": content})

    @staticmethod
    def _error(scope: Scope, message: str, kind: str, param: str | None = None) -> bytes:
        return orjson.dumps(error_body(scope["path"], message, kind, param))
