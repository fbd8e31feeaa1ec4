"""What each embedding route does, as plain async functions: a validated request model in, JSON bytes out.

The FastAPI routes (``routes_*.py``) and the raw-ASGI fast path (``fastpath.py``) both call these, so a request
gets the same answer whichever way it came in. Errors are raised as :class:`~minilm_npu.server.errors.ApiError`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from .errors import ApiError
from .rerank import rerank_tei
from .schemas import (
    OpenAIEmbeddingRequest,
    SimpleToken,
    TEIDecodeRequest,
    TEIEmbedAllRequest,
    TEIEmbedRequest,
    TEISimilarityRequest,
    TEITokenizeRequest,
)
from .schemas_rerank import TEIRerankRequest
from .state import ServerState, Task
from .validation import Edge, PreparedInput, input_work, prepare_inputs
from .vectors import finish, json_body, to_base64


def _render_openai(raw, dimensions: int | None, encoding_format: str, model: str, prompt_tokens: int) -> bytes:
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


def _render_vectors(raw: np.ndarray, dimensions: int | None, normalize: bool) -> bytes:
    vectors = finish(raw, dimensions, normalize)
    return json_body(vectors.tolist(), finite=bool(np.isfinite(vectors).all()))


async def _prepare(state: ServerState, inputs: Any, edge: Edge | None = None, **options: Any) -> PreparedInput:
    """:func:`~minilm_npu.server.validation.prepare_inputs` for a request: on the event loop when it is small,
    else in the tokenizer pool (``Batcher.preprocess``)."""
    batcher = state.batcher
    work = input_work(inputs, batcher.INLINE_WORK)
    return await batcher.preprocess(prepare_inputs, inputs, edge or state.edge, work=work, **options)


def _tei_options(body: TEIEmbedRequest | TEIEmbedAllRequest) -> dict[str, Any]:
    """The input options TEI's embedding requests share."""
    return {
        "truncate": body.truncate,
        "truncation_direction": body.truncation_direction,
        "prompt_name": body.prompt_name,
        "param": "inputs",
    }


async def embed_openai(state: ServerState, body: OpenAIEmbeddingRequest) -> bytes:
    """``POST /v1/embeddings``: ``model`` is accepted whatever it says and answered with the served name."""
    batcher = state.batcher
    with batcher.admit():
        prepared = await _prepare(state, body.input, truncate=body.truncate, dimensions=body.dimensions)
        raw = await batcher.embed(prepared.ids)
        return await batcher.preprocess(
            _render_openai,
            raw,
            body.dimensions,
            body.encoding_format,
            state.model_name,
            prepared.prompt_tokens,
            work=raw.size,
        )


async def embed_tei(state: ServerState, body: TEIEmbedRequest) -> bytes:
    """``POST /embed``: one vector per input (a list of one for a single string)."""
    batcher = state.batcher
    with batcher.admit():
        prepared = await _prepare(state, body.inputs, dimensions=body.dimensions, **_tei_options(body))
        raw = await batcher.embed(prepared.ids)
        return await batcher.preprocess(_render_vectors, raw, body.dimensions, body.normalize, work=raw.size)


async def similarity(state: ServerState, body: TEISimilarityRequest) -> bytes:
    """``POST /similarity``: cosine similarity of ``source_sentence`` to each of ``sentences``, in order."""
    sentences = body.inputs.sentences
    if not sentences:
        raise ApiError(400, "inputs.sentences must not be an empty list", kind="empty", param="sentences")
    limit = state.settings.max_client_batch_size
    if len(sentences) > limit:
        raise ApiError(
            400,
            f"inputs.sentences has {len(sentences)} items; this server takes at most {limit} per request "
            f"(--max-client-batch-size)",
            param="sentences",
        )
    parameters = body.parameters
    texts = [body.inputs.source_sentence, *sentences]
    names = ["inputs.source_sentence", *(f"inputs.sentences[{i}]" for i in range(len(sentences)))]
    batcher = state.batcher
    with batcher.admit():
        prepared = await _prepare(
            state,
            texts,
            state.edge.with_batch_limit(limit + 1),
            truncate=parameters.truncate if parameters else True,
            truncation_direction=parameters.truncation_direction if parameters else "right",
            prompt_name=parameters.prompt_name if parameters else None,
            param="inputs",
            names=names,
        )
        raw = await batcher.embed(prepared.ids)
    vectors = finish(raw, normalize=True)
    scores = vectors[1:] @ vectors[0]
    return json_body([float(s) for s in scores], finite=bool(np.isfinite(scores).all()))


def _token_chunks(ids: list[list[int]], max_tokens: int, max_rows: int) -> list[list[list[int]]]:
    """``ids`` in order, cut into forward batches of at most ``max_tokens`` real tokens and ``max_rows`` rows."""
    chunks: list[list[list[int]]] = []
    current: list[list[int]] = []
    tokens = 0
    for seq in ids:
        if current and (len(current) >= max_rows or tokens + len(seq) > max_tokens):
            chunks.append(current)
            current, tokens = [], 0
        current.append(seq)
        tokens += len(seq)
    if current:
        chunks.append(current)
    return chunks


async def embed_all(state: ServerState, body: TEIEmbedAllRequest) -> bytes:
    """``POST /embed_all``: every token's last-layer vector (special tokens included, not pooled, not normalised),
    ``[input][token][dimension]``, as sentence-transformers' ``output_value="token_embeddings"``."""
    with state.batcher.admit():
        prepared = await _prepare(state, body.inputs, **_tei_options(body))
        config = state.encoder.config
        chunks = _token_chunks(prepared.ids, config.max_batch_tokens, config.batch_size)
        return await state.tokens.run(chunks)


def _tokens(encoder, ids: list[list[int]], add_special_tokens: bool) -> bytes:
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
    return orjson.dumps(out)


async def tokenize(state: ServerState, body: TEITokenizeRequest) -> bytes:
    """``POST /tokenize``: tokens of each input, untruncated (so a client can see what would be cut)."""
    batcher = state.batcher
    with batcher.admit():
        prepared = await _prepare(state, body.inputs, prompt_name=body.prompt_name, param="inputs", check_length=False)
        return await batcher.preprocess(_tokens, state.encoder, prepared.ids, body.add_special_tokens)


def _decode(encoder, id_lists: list[list[int]], skip_special_tokens: bool) -> bytes:
    vocab = encoder.tokenizer.vocab_size
    for index, ids in enumerate(id_lists):
        if not all(0 <= i < vocab for i in ids):
            raise ApiError(400, f"ids[{index}] holds a value that is not a token id in [0, {vocab})", param="ids")
    return orjson.dumps([encoder.tokenizer.decode(ids, skip_special_tokens) for ids in id_lists])


async def decode(state: ServerState, body: TEIDecodeRequest) -> bytes:
    """``POST /decode``: the text of each list of token ids (special tokens skipped unless asked for)."""
    ids = body.ids
    batch = bool(ids) and isinstance(ids[0], list)
    id_lists = ids if batch else [ids]
    if batch and len(id_lists) > state.settings.max_client_batch_size:
        raise ApiError(
            400,
            f"ids has {len(id_lists)} items; this server takes at most {state.settings.max_client_batch_size} "
            f"per request (--max-client-batch-size)",
            param="ids",
        )
    # ``{"ids": []}`` is one empty list of ids, which decodes to "", as in text-embeddings-inference.
    work = sum(len(item) for item in id_lists)
    return await state.batcher.preprocess(_decode, state.encoder, id_lists, body.skip_special_tokens, work=work)


# -- POST / and POST /invocations -----------------------------------------------------------------------------
def _asks_for_similarity(body: Any) -> bool:
    return isinstance(body, dict) and isinstance(body.get("inputs"), dict)


def default_tasks() -> tuple[Task, ...]:
    """What ``POST /`` serves for an embedding model: TEI's sentence-similarity body (``inputs`` is an object with
    ``source_sentence``) goes to ``/similarity``, everything else to ``/embed``. A reranking model serves
    :func:`rerank_tasks` instead, as TEI does."""
    return (
        Task("similarity", _asks_for_similarity, TEISimilarityRequest, similarity),
        Task("embed", lambda body: True, TEIEmbedRequest, embed_tei),
    )


def rerank_tasks() -> tuple[Task, ...]:
    """What ``POST /`` serves for a reranking model: TEI's ``/rerank`` body (``{"query": ..., "texts": [...]}``)."""
    return (Task("rerank", lambda body: True, TEIRerankRequest, rerank_tei),)


def pick_task(tasks: tuple[Task, ...], body: Any) -> Task:
    """The first of ``tasks`` whose ``matches`` accepts the parsed body (the last task is the fallback)."""
    return next((task for task in tasks if task.matches(body)), tasks[-1])


def _loads(raw: bytes) -> Any:
    """JSON as the standard library reads it, which keeps lone surrogates (``"\\ud800"``) where the fast parsers
    refuse the whole body: such text is then a 400 naming the input, as on every route, not "invalid JSON"."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


def parse_body(model: type[BaseModel], raw: bytes) -> Any:
    """``raw`` validated against ``model``: straight from the bytes by pydantic-core, or through the standard
    library's JSON where pydantic-core's parser refuses it (lone surrogates, see :func:`_loads`).

    Raises:
        pydantic.ValidationError: not JSON, or not what ``model`` takes.
    """
    try:
        return model.model_validate_json(raw)
    except ValidationError as err:
        if err.errors()[0].get("type") != "json_invalid":
            raise
        try:
            parsed = json.loads(raw)
        except ValueError:
            raise err from None
        return model.model_validate(parsed)


async def run_task(state: ServerState, raw: bytes) -> bytes:
    """``POST /``: the body's task (:attr:`ServerState.tasks`), validated against that task's request model.

    Raises:
        pydantic.ValidationError: the body does not fit the task's model (a 422, as on any other route).
    """
    try:
        parsed = _loads(raw)
    except ValueError:
        parsed = None  # the fallback task's model reports the invalid JSON
    task = pick_task(state.tasks, parsed)
    return await task.run(state, parse_body(task.model, raw))
