"""What the rerank routes do, as plain async functions (the FastAPI routes and ``POST /`` call these), and the
answer of a route that belongs to the other kind of model (one model per server, as text-embeddings-inference).

A query and its texts become one pair each, tokenized as the cross-encoder tokenizes pairs
(:meth:`~minilm_npu.contract.Reranker.tokenize_pairs`), and join the batcher's queue like any other token ids: the
workers return the classifier's logits, and the activation (or ``raw_scores``) is applied here, per request.
Results are sorted by score, highest first; equal scores keep their input order, as ``CrossEncoder.rank``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..contract import Reranker
from ..errors import InputError
from ..tokenization import UntokenizableText
from .errors import ApiError
from .schemas_rerank import RerankRequest, TEIRerankRequest
from .state import ServerState
from .vectors import json_body

#: The routes of each kind of model, for the answer on a server that runs the other kind.
EMBED_PATHS = (
    "/v1/embeddings",
    "/embeddings",
    "/embed",
    "/embed_all",
    "/similarity",
    "/tokenize",
    "/decode",
)
RERANK_PATHS = ("/rerank", "/v1/rerank")


def _tokenize(reranker: Reranker, query: str, texts: list[str], truncate: bool, param: str) -> list:
    """The pairs' token ids, checked: 400 naming the query or ``param[i]`` for a text the tokenizer cannot take,
    or (``truncate=False``) for a pair over the model's limit."""
    try:
        ids = reranker.tokenize_pairs([(query, text) for text in texts], truncate=truncate)
    except UntokenizableText as err:
        try:
            reranker.tokenize([query])
        except UntokenizableText as bad:
            raise ApiError(400, f"query {bad.reason}", param="query") from None
        raise ApiError(400, f"{param}[{err.index}] {err.reason}", param=param) from None
    except InputError as err:
        raise ApiError(400, str(err), param=param) from None
    if not truncate:
        limit = reranker.max_seq_length
        for index, seq in enumerate(ids):
            if len(seq) > limit:
                raise ApiError(
                    400,
                    f"{param}[{index}] with the query is {len(seq)} tokens; the model takes at most {limit} (truncate: "
                    "true cuts the longer text of a pair first)",
                    param=param,
                )
    return ids


async def _logits(state: ServerState, query: str, texts: list[str], truncate: bool, param: str) -> tuple:
    """The logits ``(len(texts), 1)`` of each (query, text) pair, and the pairs' token count."""
    reranker = state.reranker
    if reranker is None:  # the routes are only mounted on a reranking server; POST / only dispatches there too
        raise wrong_model(state, "/rerank")
    if not texts:
        raise ApiError(400, f"{param} must not be an empty list", kind="empty", param=param)
    limit = state.settings.max_client_batch_size
    if len(texts) > limit:
        raise ApiError(
            400,
            f"{param} has {len(texts)} items; this server takes at most {limit} per request (--max-client-batch-size)",
            param=param,
        )
    batcher = state.batcher
    with batcher.admit():
        work = len(query) * len(texts) + sum(len(text) for text in texts)
        ids = await batcher.preprocess(_tokenize, reranker, query, texts, truncate, param, work=work)
        raw = await batcher.embed(ids)
    return raw, sum(len(seq) for seq in ids)


def _best_first(scores: np.ndarray) -> list[int]:
    """Indices by score, highest first; equal scores in input order (Python's sort is stable)."""
    return sorted(range(len(scores)), key=lambda index: -scores[index])


async def rerank_tei(state: ServerState, body: TEIRerankRequest) -> bytes:
    """``POST /rerank``: ``[{"index", "score"(, "text")}]``, highest score first; the model's activation unless
    ``raw_scores``."""
    raw, _ = await _logits(state, body.query, body.texts, body.truncate is not False, "texts")
    scores = raw[:, 0] if body.raw_scores else state.reranker.activate(raw)[:, 0]
    results = []
    for index in _best_first(scores):
        results.append({"index": index, "score": float(scores[index])})
        if body.return_text:
            results[-1]["text"] = body.texts[index]
    return json_body(results, finite=bool(np.isfinite(scores).all()))


async def rerank_v1(state: ServerState, body: RerankRequest) -> bytes:
    """``POST /v1/rerank``: ``{"model", "results": [{"index", "relevance_score"(, "document")}], "usage"}``, the
    best ``top_n`` first."""
    if body.top_n is not None and body.top_n < 1:
        raise ApiError(400, f"top_n must be at least 1, not {body.top_n}", param="top_n")
    raw, tokens = await _logits(state, body.query, body.documents, body.truncate, "documents")
    scores = state.reranker.activate(raw)[:, 0]
    results = []
    for index in _best_first(scores)[: body.top_n]:
        results.append({"index": index, "relevance_score": float(scores[index])})
        if body.return_documents:
            results[-1]["document"] = {"text": body.documents[index]}
    payload = {"model": state.model_name, "results": results, "usage": {"total_tokens": tokens}}
    return json_body(payload, finite=bool(np.isfinite(scores).all()))


def wrong_model(state: ServerState, path: str) -> ApiError:
    """The 404 for a route of the other kind of model, naming what this server serves instead."""
    if state.serves == "rerank":
        served: Sequence[str] = (*RERANK_PATHS, "/")
        what = f"the reranking model {state.model_name!r}"
        needs = "an embedding model"
    else:
        served = ("/v1/embeddings", "/embed", "/")
        what = f"the embedding model {state.model_name!r}"
        needs = "a reranking (cross-encoder) model"
    return ApiError(
        404,
        f"this server serves {what} (POST {', '.join(served)}); {path} needs {needs}: one model per server, start "
        "another for it",
        kind="not_found",
    )
