"""OpenAI-compatible routes: ``POST /v1/embeddings`` and ``GET /v1/models``."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Request, Response

from .schemas import OpenAIEmbeddingRequest, OpenAIEmbeddingResponse
from .state import get_state
from .validation import input_work, prepare_inputs
from .vectors import finish, json_body, to_base64

router = APIRouter()


def _render(raw, dimensions: int | None, encoding_format: str, model: str, prompt_tokens: int) -> bytes:
    """The response body (built in the tokenizer pool when large: serialising hundreds of vectors is real work)."""
    vectors = finish(raw, dimensions, normalize=True)
    encode = to_base64 if encoding_format == "base64" else (lambda v: v.tolist())
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)} for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
    return json_body(body, finite=encoding_format == "base64" or bool(np.isfinite(vectors).all()))


@router.post("/v1/embeddings", response_model=OpenAIEmbeddingResponse)
async def create_embeddings(body: OpenAIEmbeddingRequest, request: Request) -> Response:
    """Embed ``input`` (texts or token ids). ``model`` is accepted whatever it says and answered with the served
    model name, so clients configured for another embedding model work unchanged."""
    state = get_state(request)
    batcher = state.batcher
    with batcher.admit():
        prepared = await batcher.preprocess(
            prepare_inputs,
            body.input,
            state.encoder,
            max_client_batch_size=state.settings.max_client_batch_size,
            truncate=body.truncate,
            dimensions=body.dimensions,
            work=input_work(body.input, batcher.INLINE_WORK),
        )
        raw = await batcher.embed(prepared.ids)
        content = await batcher.preprocess(
            _render, raw, body.dimensions, body.encoding_format, state.model_name, prepared.prompt_tokens, work=raw.size
        )
    return Response(content=content, media_type="application/json")


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    """The one served model, as OpenAI's model list."""
    name = get_state(request).model_name
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "minilm-npu"}]}
