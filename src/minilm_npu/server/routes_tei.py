"""text-embeddings-inference-compatible routes: ``/embed``, ``/similarity``, ``/tokenize``."""

from __future__ import annotations

import json

import numpy as np
from fastapi import APIRouter, Request, Response

from .errors import ApiError
from .schemas import SimpleToken, TEIEmbedRequest, TEISimilarityRequest, TEITokenizeRequest
from .state import get_state
from .validation import input_work, prepare_inputs
from .vectors import finish, json_body

router = APIRouter()


def _json(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def _render_vectors(raw: np.ndarray, dimensions: int | None, normalize: bool) -> bytes:
    vectors = finish(raw, dimensions, normalize)
    return json_body(vectors.tolist(), finite=bool(np.isfinite(vectors).all()))


@router.post("/embed", response_model=list[list[float]])
async def embed(body: TEIEmbedRequest, request: Request) -> Response:
    """One vector per input (a list of one for a single string), normalised unless ``normalize`` is false."""
    state = get_state(request)
    batcher = state.batcher
    with batcher.admit():
        prepared = await batcher.preprocess(
            prepare_inputs,
            body.inputs,
            state.encoder,
            max_client_batch_size=state.settings.max_client_batch_size,
            truncate=body.truncate,
            dimensions=body.dimensions,
            param="inputs",
            work=input_work(body.inputs, batcher.INLINE_WORK),
        )
        raw = await batcher.embed(prepared.ids)
        content = await batcher.preprocess(_render_vectors, raw, body.dimensions, body.normalize, work=raw.size)
    return Response(content=content, media_type="application/json")


@router.post("/similarity", response_model=list[float])
async def similarity(body: TEISimilarityRequest, request: Request) -> Response:
    """Cosine similarity of ``inputs.source_sentence`` to each of ``inputs.sentences``, in order."""
    state = get_state(request)
    if not body.inputs.sentences:
        raise ApiError(400, "inputs.sentences must not be an empty list", kind="empty", param="sentences")
    limit = state.settings.max_client_batch_size
    if len(body.inputs.sentences) > limit:
        raise ApiError(
            400,
            f"inputs.sentences has {len(body.inputs.sentences)} items; this server takes at most "
            f"{limit} per request (--max-client-batch-size)",
            param="sentences",
        )
    truncate = body.parameters.truncate if body.parameters else True
    texts = [body.inputs.source_sentence, *body.inputs.sentences]
    batcher = state.batcher
    with batcher.admit():
        prepared = await batcher.preprocess(
            prepare_inputs,
            texts,
            state.encoder,
            max_client_batch_size=limit + 1,
            truncate=truncate,
            param="inputs.sentences",
            work=input_work(texts, batcher.INLINE_WORK),
        )
        raw = await batcher.embed(prepared.ids)
    vectors = finish(raw, normalize=True)
    scores = vectors[1:] @ vectors[0]
    return Response(
        content=json_body([float(s) for s in scores], finite=bool(np.isfinite(scores).all())),
        media_type="application/json",
    )


def _tokens(encoder, ids: list[list[int]], add_special_tokens: bool) -> list[list[dict]]:
    out = []
    for seq in ids:
        texts = encoder.tokenizer.decode_tokens(seq)
        last = len(seq) - 1
        tokens = [
            SimpleToken(id=tid, text=text, special=pos in (0, last)).model_dump()
            for pos, (tid, text) in enumerate(zip(seq, texts))
        ]
        # [CLS] and [SEP] are always first and last: the tokenizer adds them to every input.
        out.append(tokens if add_special_tokens else tokens[1:-1])
    return out


@router.post("/tokenize", response_model=list[list[SimpleToken]])
async def tokenize(body: TEITokenizeRequest, request: Request) -> Response:
    """Tokens of each input, untruncated (so a client can see what would be cut at the model's limit)."""
    state = get_state(request)
    batcher = state.batcher
    with batcher.admit():
        prepared = await batcher.preprocess(
            prepare_inputs,
            body.inputs,
            state.encoder,
            max_client_batch_size=state.settings.max_client_batch_size,
            truncate=False,
            param="inputs",
            check_length=False,
        )
        tokens = await batcher.preprocess(_tokens, state.encoder, prepared.ids, body.add_special_tokens)
    return Response(content=_json(tokens), media_type="application/json")
