"""The routes of a reranking (cross-encoder) server: TEI's ``POST /rerank``, the hosted rerank APIs'
``POST /v1/rerank``, and the model's task at ``POST /`` and ``POST /invocations``; and, on either kind of server,
the other kind's routes, which answer 404 naming what this server serves (undocumented: it does not serve them)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from . import rerank
from .openapi import EMBED_ERRORS, errors_doc
from .rerank import EMBED_PATHS, RERANK_PATHS
from .routes_tei import task_route
from .schemas_rerank import RerankRequest, RerankResponse, TEIRank, TEIRerankRequest
from .state import get_state

router = APIRouter()
_JSON = "application/json"


def _json(content: bytes) -> Response:
    return Response(content=content, media_type=_JSON)


@router.post(
    "/rerank",
    response_model=list[TEIRank],
    response_model_exclude_none=True,
    responses=errors_doc(*EMBED_ERRORS),
    tags=["Text Embeddings Inference"],
)
async def rerank_tei(body: TEIRerankRequest, request: Request) -> Response:
    """Each text scored against the query, highest first: the model's activation (Sigmoid for a one-label
    cross-encoder), or its logits with ``raw_scores``."""
    return _json(await rerank.rerank_tei(get_state(request), body))


@router.post(
    "/v1/rerank",
    response_model=RerankResponse,
    response_model_exclude_none=True,
    responses=errors_doc(*EMBED_ERRORS, openai=True),
    tags=["Rerank API"],
)
async def rerank_v1(body: RerankRequest, request: Request) -> Response:
    """The documents by relevance to the query, best first (the best ``top_n`` when given)."""
    return _json(await rerank.rerank_v1(get_state(request), body))


_TASK_DOC = {
    "requestBody": {
        "required": True,
        "content": {_JSON: {"schema": {"$ref": "#/components/schemas/TEIRerankRequest"}}},
    },
    "responses": {
        "200": {
            "description": "What /rerank answers.",
            "content": {_JSON: {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/TEIRank"}}}},
        }
    },
}

for _path in ("/", "/invocations"):
    router.add_api_route(
        _path,
        task_route,
        methods=["POST"],
        summary="The model's task (text-embeddings-inference's POST /; SageMaker's /invocations)",
        description="Reranks like /rerank.",
        responses=errors_doc(*EMBED_ERRORS),
        openapi_extra=_TASK_DOC,
        name=f"rerank_task_{_path.strip('/') or 'root'}",
        tags=["Text Embeddings Inference"],
    )


def other_kind_router(serves: str) -> APIRouter:
    """``POST`` on the routes of the kind of model this server does not run: 404 naming what it serves."""
    other = APIRouter(include_in_schema=False)

    async def not_served(request: Request) -> Response:
        raise rerank.wrong_model(get_state(request), request.url.path)

    for path in EMBED_PATHS if serves == "rerank" else RERANK_PATHS:
        other.add_api_route(path, not_served, methods=["POST"], name=f"not_served_{path}")
    return other
