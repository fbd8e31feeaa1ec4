"""The application factory: the FastAPI app, with the edge middlewares and the fast path around it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from ..contract import Encoder, Reranker
from ..devices import release_host_threads
from ..errors import InputError
from .batcher import Batcher
from .errors import install_error_handlers
from .fastpath import RERANK_ROUTES, ROUTES, FastPath
from .handlers import default_tasks, rerank_tasks
from .metrics import ServerMetrics
from .middleware import ApiKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware, ReadinessMiddleware
from .openapi import install_openapi
from .routes_openai import router as openai_router
from .routes_ops import router as ops_router
from .routes_rerank import other_kind_router
from .routes_rerank import router as rerank_router
from .routes_tei import router as tei_router
from .settings import ServerSettings
from .state import ServerState
from .token_embedder import TokenEmbedder
from .validation import Edge

log = logging.getLogger(__name__)


def create_app(encoder: Encoder | Reranker, settings: ServerSettings | None = None) -> EmbeddingServer:
    """Build the server around an encoder (the embedding routes) or a reranker (the rerank routes): one model per
    server; the other kind's routes answer 404 naming what this one serves.

    Start-up (the ASGI lifespan) starts one batcher worker per device and warms the model up: every shape gear of
    every device once, then a real forward pass through the batcher. With ``settings.warm_up_in_background`` the
    port opens at once and ``/health`` and every ``POST`` route answer 503 ("warming up") until then; a failed
    warm-up answers 503 for good and calls ``state.readiness.on_failure`` (``minilm-npu serve`` stops there and
    exits non-zero). Otherwise start-up (which uvicorn completes before it opens the port) waits for the warm-up
    and fails, so the server does not start, if it fails. Shutdown lets queued work finish, then stops the workers.

    Args:
        encoder: A :class:`~minilm_npu.MiniLMEncoder`, or anything else that implements
            :class:`minilm_npu.contract.Encoder` (its ``config`` bounds the forward batches); or a one-label
            :class:`~minilm_npu.Reranker` (:class:`minilm_npu.contract.Reranker`).
        settings: Limits and options; defaults as :class:`ServerSettings`.

    Raises:
        InputError: a reranker with more than one label (the rerank routes give one score per text).

    Returns:
        The ASGI app (:class:`EmbeddingServer`, around the FastAPI app). Each app has its own Prometheus
        registry, so several can live in one process.
    """
    settings = settings or ServerSettings()
    reranker = encoder if isinstance(encoder, Reranker) else None
    if reranker is not None and reranker.num_labels != 1:
        raise InputError(
            f"the rerank routes give one score per text; {reranker.model_name} has {reranker.num_labels} labels "
            f"({', '.join(reranker.labels)}): serve a one-label cross-encoder"
        )
    metrics = ServerMetrics()
    batcher = Batcher(encoder, settings, metrics=metrics)
    state = ServerState(
        encoder=encoder,
        settings=settings,
        batcher=batcher,
        metrics=metrics,
        edge=Edge(encoder, settings.max_client_batch_size),
        # The last batch worker: a one-thread lane on one CPU, so /embed_all adds no OpenMP pool of its size.
        tokens=TokenEmbedder(encoder.batch_workers()[-1], release_host_threads),
        tasks=rerank_tasks() if reranker is not None else default_tasks(),
        reranker=reranker,
    )
    readiness = state.readiness
    devices = ", ".join(str(worker.device) for worker in encoder.workers)

    def warm_up() -> None:
        log.info("warming up %s on %s: every shape gear of every device runs once first", state.model_name, devices)
        readiness.progress(f"running every shape gear once on {devices}")
        encoder.warmup()  # every device, every gear; the engine logs each gear and its time
        release_host_threads()  # see below: this pool thread's OpenMP workers too

    async def warm_up_then_serve() -> None:
        start = time.perf_counter()
        try:
            await asyncio.to_thread(warm_up)
            healthy = await batcher.health(max(settings.health_timeout_s, 60.0))
            why = "the model could not embed a test input (see the log above)"
        except Exception as err:  # noqa: BLE001 - the warm-up's failure is the finding, logged with its traceback
            log.exception("warm-up failed")
            healthy, why = False, f"{type(err).__name__}: {err}"
        if not healthy:
            log.error("warm-up failed: %s; not serving", why)
            readiness.set_failed(why)
            return
        readiness.set_ready()
        log.info("model %s warmed up on %s in %.1f s; serving", state.model_name, devices, time.perf_counter() - start)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The model was loaded on this thread and runs on the batcher's: one OpenMP pool, not two (a CPU forward
        # took 2x as long with the loading thread's pool still alive; devices.release_host_threads says why).
        release_host_threads()
        batcher.start()
        warming = asyncio.create_task(warm_up_then_serve())
        if not settings.warm_up_in_background:
            await warming
            if not readiness.ready:
                await asyncio.to_thread(batcher.close, 5.0)
                raise RuntimeError(readiness.detail)
        try:
            yield
        finally:
            warming.cancel()  # a warm-up still running finishes its forward in its thread; nothing waits for it
            state.tokens.close()
            await asyncio.to_thread(batcher.close)

    from .. import __version__

    docs = {} if settings.docs else {"openapi_url": None, "docs_url": None, "redoc_url": None}
    if reranker is not None:
        title, description = "minilm-npu reranking server", "text-embeddings-inference-compatible and hosted-API "
        description += "rerank routes for a cross-encoder."
        routers = [rerank_router, ops_router]
    else:
        title, description = "minilm-npu embedding server", "OpenAI- and text-embeddings-inference-compatible "
        description += "sentence embeddings."
        routers = [openai_router, tei_router, ops_router]
    app = FastAPI(title=title, version=__version__, lifespan=lifespan, description=description, **docs)
    app.state.server = state
    install_error_handlers(app)
    install_openapi(app, state)
    for router in [*routers, other_kind_router(state.serves)]:
        app.include_router(router)
    return EmbeddingServer(app, state, routers)


class EmbeddingServer:
    """The ASGI application: the edge middlewares around the embedding routes' fast path and the FastAPI app.

    Order at request time: metrics, API key, readiness (503 "warming up" on ``POST`` until warmed up), body
    limit, then the fast path (``POST`` of the embedding routes), then FastAPI for everything else. The edge sits
    outside FastAPI so that the fast path pays for none of FastAPI's own layers; the lifespan (start-up and
    shutdown) goes through to FastAPI. Attributes not defined here (``state``, ``routes``, ``openapi``...) are the
    FastAPI app's.

    Args:
        api: The FastAPI app.
        state: Its :class:`ServerState`.
    """

    def __init__(self, api: FastAPI, state: ServerState, routers: list[Any] | None = None):
        self.api = api
        settings = state.settings
        routers = routers or [openai_router, tei_router, ops_router]
        routes = frozenset(path for router in routers for path in _paths(router))
        fast_routes = RERANK_ROUTES if state.serves == "rerank" else ROUTES
        app: Any = FastPath(api, state, fast_routes) if settings.fast_path else api
        app = BodyLimitMiddleware(app, max_bytes=settings.max_body_bytes)
        app = ReadinessMiddleware(app, readiness=state.readiness)
        if settings.api_key is not None:
            app = ApiKeyMiddleware(app, api_key=settings.api_key)
        self._app = MetricsMiddleware(app, metrics=state.metrics, routes=routes)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.api, name)


def _paths(router: Any) -> list[str]:
    """The paths a router serves (the metrics' ``route`` label values)."""
    return [route.path for route in router.routes if hasattr(route, "path")]
