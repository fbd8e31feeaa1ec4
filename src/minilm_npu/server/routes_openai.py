"""OpenAI-compatible routes: ``POST /v1/embeddings`` (and ``POST /embeddings``, as text-embeddings-inference serves
it), ``GET /v1/models``, ``GET /v1/models/{model_id}``."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from . import handlers
from .errors import ApiError
from .openapi import EMBED_ERRORS, errors_doc
from .schemas import ModelCard, ModelList, OpenAIEmbeddingRequest, OpenAIEmbeddingResponse
from .state import get_state

router = APIRouter(tags=["OpenAI"])
_EMBEDDINGS = {
    "response_model": OpenAIEmbeddingResponse,
    "responses": errors_doc(*EMBED_ERRORS, openai=True),
    "summary": "Create embeddings",
}


@router.post("/v1/embeddings", **_EMBEDDINGS)
@router.post("/embeddings", **_EMBEDDINGS)
async def create_embeddings(body: OpenAIEmbeddingRequest, request: Request) -> Response:
    """Embed ``input`` (texts or token ids). ``model`` is accepted whatever it says and answered with the served
    model name, so clients configured for another embedding model work unchanged."""
    content = await handlers.embed_openai(get_state(request), body)
    return Response(content=content, media_type="application/json")


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> dict:
    """The one served model, as OpenAI's model list."""
    return {"object": "list", "data": [get_state(request).model_card()]}


@router.get("/v1/models/{model_id:path}", response_model=ModelCard, responses=errors_doc(404, openai=True))
async def retrieve_model(model_id: str, request: Request) -> dict:
    """The served model by its name (``--served-model-name``, else the model's own); 404 for any other."""
    state = get_state(request)
    if model_id != state.model_name:
        raise ApiError(
            404,
            f"the model {model_id!r} does not exist; this server serves {state.model_name!r}",
            kind="no_model",
            param="model",
        )
    return state.model_card()
