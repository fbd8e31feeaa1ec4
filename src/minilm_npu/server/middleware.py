"""Pure-ASGI middleware at the edge: request metrics, API-key check, readiness gate, body-size limit (outermost
first)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from .errors import error_response
from .metrics import ServerMetrics

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: GET routes that stay open without an API key: probes and scrapers rarely carry credentials (``/`` and
#: ``/ping`` are text-embeddings-inference's and SageMaker's health routes), and the API's own description (as
#: text-embeddings-inference keeps its docs public; ``--no-docs`` turns these pages off).
OPEN_PATHS = frozenset(
    {"/health", "/", "/ping", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
)


def is_open(method: str, path: str) -> bool:
    """Whether a request needs no API key: a GET (or HEAD) of one of :data:`OPEN_PATHS`."""
    return method in ("GET", "HEAD") and path in OPEN_PATHS


class MetricsMiddleware:
    """Counts every HTTP request by route and status and times it (401/413/429 included).

    Unknown paths are counted as ``other`` so that scanners cannot blow up the label set.
    """

    def __init__(self, app: ASGIApp, metrics: ServerMetrics, routes: Collection[str]):
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self._cache: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            counter, histogram = self._children(route, status)
            counter.inc()
            histogram.observe(time.perf_counter() - start)

    def _children(self, route: str, status: int) -> tuple[Any, Any]:
        """The labelled counter and histogram of a route and status, looked up once (``labels()`` takes a lock
        and builds its key on every call)."""
        key = (route, status)
        children = self._cache.get(key)
        if children is None:
            children = self._cache[key] = (
                self.metrics.requests.labels(route=route, status=str(status)),
                self.metrics.latency.labels(route=route),
            )
        return children


class ApiKeyMiddleware:
    """Requires ``Authorization: Bearer <key>`` (compared in constant time) except where :func:`is_open`."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.expected = api_key.encode("utf-8")

    def _authorised(self, scope: Scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    return hmac.compare_digest(token.strip(), self.expected)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_open(scope["method"], scope["path"]) and not self._authorised(scope):
            response = error_response(
                scope["path"],
                401,
                "missing or wrong API key: send 'Authorization: Bearer <key>'",
                "auth",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class ReadinessMiddleware:
    """Answers 503 (``unhealthy``, in the route's error shape, ``Retry-After: 1``) to every ``POST`` until the model
    is warmed up, so no request waits behind the warm-up or meets a cold shape. ``GET`` routes (health, info,
    metrics, models, the API docs) answer: ``/health`` says 503 "warming up" itself.

    Args:
        readiness: The app's :class:`~minilm_npu.server.state.Readiness`.
    """

    def __init__(self, app: ASGIApp, readiness: Any):
        self.app = app
        self.readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not self.readiness.ready:
            response = error_response(
                scope["path"], 503, self.readiness.detail, "unhealthy", headers={"Retry-After": "1"}
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Answers 413 for bodies over ``max_bytes``, before any of it is parsed.

    A declared ``Content-Length`` over the limit is refused without reading; a chunked body is read up to the
    limit and refused as soon as it passes it. Accepted bodies are replayed to the app unchanged.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, scope: Scope):
        return error_response(
            scope["path"], 413, f"request body is larger than {self.max_bytes} bytes (--max-body-bytes)", "too_large"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._too_large(scope)(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away before sending it all
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(scope)(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
