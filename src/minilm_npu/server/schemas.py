"""Request and response models for the OpenAI and TEI routes.

Strict types on purpose: ``"1"`` is not a token id and ``true`` is not an integer, so a wrong type is a 422
rather than a silent coercion. Unknown fields are ignored, as both upstream APIs do.
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

#: A string, a list of strings, one list of token ids, or a list of lists of token ids.
EmbeddingInput = Union[StrictStr, list[StrictStr], list[StrictInt], list[list[StrictInt]]]  # noqa: UP007 - a runtime alias


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OpenAIEmbeddingRequest(_Request):
    """``POST /v1/embeddings``, as the OpenAI API defines it, plus ``truncate``."""

    input: EmbeddingInput = Field(
        description="Text(s) or token ids to embed. An empty string is embedded "
        "([CLS] [SEP]); an empty list is an error."
    )
    model: StrictStr | None = Field(None, description="Accepted and echoed as the served model name.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(
        None, description="Keep the first N dimensions and re-normalise (a quality trade-off, as in TEI)."
    )
    user: StrictStr | None = None
    truncate: StrictBool = Field(
        True, description="Extension: cut inputs over the model's limit (default); false rejects them with 400."
    )


class TEIEmbedRequest(_Request):
    """``POST /embed`` (text-embeddings-inference)."""

    inputs: EmbeddingInput
    normalize: StrictBool = True
    truncate: StrictBool = True
    dimensions: StrictInt | None = None


class SimilarityInput(_Request):
    """The ``inputs`` of ``POST /similarity``."""

    source_sentence: StrictStr
    sentences: list[StrictStr]


class SimilarityParameters(_Request):
    """The optional ``parameters`` of ``POST /similarity``."""

    truncate: StrictBool = True


class TEISimilarityRequest(_Request):
    """``POST /similarity`` (TEI): cosine similarity of ``source_sentence`` to each of ``sentences``."""

    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


class TEITokenizeRequest(_Request):
    """``POST /tokenize`` (TEI). Inputs are not truncated here, so a client can see what would be cut."""

    inputs: StrictStr | list[StrictStr]
    add_special_tokens: StrictBool = True


# -- responses (documentation; the routes build plain JSON for speed) -------------------------------------------
class EmbeddingData(BaseModel):
    """One vector of an OpenAI response."""

    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    """Real token counts (special tokens included, after truncation)."""

    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingResponse(BaseModel):
    """``POST /v1/embeddings`` response."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage


class SimpleToken(BaseModel):
    """One token of a ``/tokenize`` response (offsets are not reported: ``start``/``stop`` are null)."""

    id: int
    text: str
    special: bool
    start: int | None = None
    stop: int | None = None


class Info(BaseModel):
    """``GET /info``."""

    model_id: str
    model_dtype: str
    model_type: dict
    backend: str
    dimension: int
    max_input_length: int
    devices: list[str]
    max_concurrent_requests: int
    max_batch_tokens: int
    max_client_batch_size: int
    max_wait_ms: float
    max_body_bytes: int
    auth_required: bool
    version: str
