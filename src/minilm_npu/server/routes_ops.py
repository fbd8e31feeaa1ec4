"""Operational routes: ``GET /health`` (also ``GET /`` and ``GET /ping``, text-embeddings-inference's and
SageMaker's health routes), ``GET /info``, ``GET /metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from .errors import ApiError
from .openapi import errors_doc
from .schemas import Health, Info
from .state import get_state

router = APIRouter(tags=["Operations"])
_HEALTH = {"response_model": Health, "responses": errors_doc(503)}


@router.get("/health", **_HEALTH)
@router.get("/", **_HEALTH)
@router.get("/ping", **_HEALTH)
async def health(request: Request) -> dict:
    """200 when a real forward pass through the batcher's workers succeeds; 503 while the model warms up (as
    text-embeddings-inference answers before it is ready), after a failed warm-up, or when the model cannot answer."""
    state = get_state(request)
    if not state.readiness.ready:
        raise ApiError(503, state.readiness.detail, kind="unhealthy")
    if not await state.batcher.health(state.settings.health_timeout_s):
        raise ApiError(503, "the model cannot answer: the health forward pass failed or timed out", kind="unhealthy")
    return {"status": "ok"}


def _model_type(state) -> dict:
    """TEI's ``model_type``: the embedding model's pooling, or the reranker's labels."""
    if state.reranker is not None:
        labels = state.reranker.labels
        return {"reranker": {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)}}}
    return {"embedding": {"pooling": state.encoder.pooling}}


@router.get("/info", response_model=Info)
async def info(request: Request) -> Info:
    """Model, dimension, input limit, devices, dtype and the server's limits."""
    from .. import __version__

    state = get_state(request)
    encoder, settings = state.encoder, state.settings
    return Info(
        model_id=state.model_name,
        model_dtype=encoder.config.dtype,
        model_type=_model_type(state),
        backend=encoder.config.backend,
        dimension=int(encoder.dimension),
        max_input_length=int(encoder.max_seq_length),
        devices=[str(worker.device) for worker in encoder.workers],
        max_concurrent_requests=settings.max_concurrent_requests,
        max_batch_tokens=encoder.config.max_batch_tokens,
        max_client_batch_size=settings.max_client_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_body_bytes=settings.max_body_bytes,
        auth_required=settings.api_key is not None,
        version=__version__,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    content, content_type = get_state(request).metrics.render()
    return Response(content=content, media_type=content_type)
