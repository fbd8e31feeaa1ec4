"""Request and response models of the rerank routes: text-embeddings-inference's ``POST /rerank`` and the
``POST /v1/rerank`` shape of the hosted rerank APIs (Cohere, Jina). Strict types, as in :mod:`.schemas`."""

from __future__ import annotations

from pydantic import BaseModel, Field, StrictBool, StrictStr

from .schemas import Integer, Texts, _Request, _schema_extra

_TRUNCATE = "Cut a pair over the model's limit, the longer text first (default); false rejects it with 400 instead."


class TEIRerankRequest(_Request):
    """``POST /rerank`` (and ``POST /``, ``POST /invocations`` on a reranking server), as TEI defines it."""

    query: StrictStr
    texts: Texts = Field(description="The texts to score against the query, each as one pair with it.")
    raw_scores: StrictBool = Field(False, description="The classifier's logits instead of the model's activation.")
    return_text: StrictBool = Field(False, description="Give each text back in its result.")
    truncate: StrictBool | None = Field(True, description=_TRUNCATE)


class TEIRank(BaseModel):
    """One scored text of ``POST /rerank``; the answer is a list of them, highest score first."""

    index: int
    score: float
    text: str | None = Field(None, description="The text, when return_text is true.")


class RerankRequest(_Request):
    """``POST /v1/rerank``: the hosted rerank APIs' request."""

    model: StrictStr | None = Field(None, description="Accepted and echoed as the served model name.")
    query: StrictStr
    documents: Texts = Field(description="The documents to score against the query.")
    top_n: Integer | None = Field(
        None, description="Return only the best N results.", json_schema_extra=_schema_extra(minimum=1)
    )
    return_documents: StrictBool = Field(False, description="Give each document back in its result.")
    truncate: StrictBool = Field(True, description="Extension. " + _TRUNCATE)


class RerankDocument(BaseModel):
    """A returned document."""

    text: str


class RerankResult(BaseModel):
    """One scored document of ``POST /v1/rerank``."""

    index: int
    relevance_score: float
    document: RerankDocument | None = Field(None, description="The document, when return_documents is true.")


class RerankUsage(BaseModel):
    """Tokens scored (every pair's, special tokens included)."""

    total_tokens: int


class RerankResponse(BaseModel):
    """``POST /v1/rerank``'s answer: results highest score first."""

    model: str
    results: list[RerankResult]
    usage: RerankUsage
