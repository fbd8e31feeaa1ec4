"""text-embeddings-inference-compatible routes: ``/embed``, ``/embed_all``, ``/similarity``, ``/tokenize``,
``/decode``, and the model's task at ``POST /`` and ``POST /invocations`` (SageMaker)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from . import handlers
from .openapi import EMBED_ERRORS, errors_doc
from .schemas import (
    SimpleToken,
    TEIDecodeRequest,
    TEIEmbedAllRequest,
    TEIEmbedRequest,
    TEISimilarityRequest,
    TEITokenizeRequest,
)
from .state import get_state

router = APIRouter(tags=["Text Embeddings Inference"])
_JSON = "application/json"


def _json(content: bytes) -> Response:
    return Response(content=content, media_type=_JSON)


@router.post("/embed", response_model=list[list[float]], responses=errors_doc(*EMBED_ERRORS))
async def embed(body: TEIEmbedRequest, request: Request) -> Response:
    """One vector per input (a list of one for a single string), normalised unless ``normalize`` is false."""
    return _json(await handlers.embed_tei(get_state(request), body))


@router.post("/embed_all", response_model=list[list[list[float]]], responses=errors_doc(*EMBED_ERRORS))
async def embed_all(body: TEIEmbedAllRequest, request: Request) -> Response:
    """Every token's last-layer vector per input, special tokens included, before pooling and normalisation."""
    return _json(await handlers.embed_all(get_state(request), body))


@router.post("/similarity", response_model=list[float], responses=errors_doc(*EMBED_ERRORS))
async def similarity(body: TEISimilarityRequest, request: Request) -> Response:
    """Cosine similarity of ``inputs.source_sentence`` to each of ``inputs.sentences``, in order."""
    return _json(await handlers.similarity(get_state(request), body))


@router.post("/tokenize", response_model=list[list[SimpleToken]], responses=errors_doc(400, 413, 422, 429))
async def tokenize(body: TEITokenizeRequest, request: Request) -> Response:
    """Tokens of each input, untruncated (so a client can see what would be cut at the model's limit)."""
    return _json(await handlers.tokenize(get_state(request), body))


@router.post("/decode", response_model=list[str], responses=errors_doc(400, 413, 422))
async def decode(body: TEIDecodeRequest, request: Request) -> Response:
    """The text of each list of token ids."""
    return _json(await handlers.decode(get_state(request), body))


_TASK_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            _JSON: {
                "schema": {
                    "anyOf": [
                        {"$ref": "#/components/schemas/TEIEmbedRequest"},
                        {"$ref": "#/components/schemas/TEISimilarityRequest"},
                    ]
                }
            }
        },
    },
    "responses": {
        "200": {
            "description": "What /embed answers (vectors), or /similarity for a similarity body (scores).",
            "content": {
                _JSON: {
                    "schema": {
                        "anyOf": [
                            {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                            {"type": "array", "items": {"type": "number"}},
                        ]
                    }
                }
            },
        }
    },
}


async def task_route(request: Request) -> Response:
    """``POST /`` and ``POST /invocations``: the body's task among the model's (:func:`handlers.run_task`)."""
    state = get_state(request)
    try:
        return _json(await handlers.run_task(state, await request.body()))
    except ValidationError as err:
        from fastapi.exceptions import RequestValidationError

        raise RequestValidationError(err.errors()) from None


for _path in ("/", "/invocations"):
    router.add_api_route(
        _path,
        task_route,
        methods=["POST"],
        summary="The model's task (text-embeddings-inference's POST /; SageMaker's /invocations)",
        description="Embeds like /embed; a body whose inputs is an object with source_sentence and sentences is "
        "a /similarity request.",
        responses=errors_doc(*EMBED_ERRORS),
        openapi_extra=_TASK_DOC,
        name=f"task_{_path.strip('/') or 'root'}",
    )
