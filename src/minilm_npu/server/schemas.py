"""Request and response models for the OpenAI and TEI routes.

Strict types on purpose: ``"1"`` is not a token id and ``true`` is not an integer, so a wrong type is a 422
rather than a silent coercion. Unknown fields are ignored, as both upstream APIs do.

The bounds that depend on the model or on the server's flags (most inputs per request, ``dimensions``, the
vocabulary, the prompt names) are checked in ``validation.py`` with messages that name the flag; here they appear
only in the JSON schema, as ``$name`` values filled in from :data:`SCHEMA_VALUES`, which ``openapi.py`` sets to
this server's values while it builds the document, so that the published contract states every bound the server
enforces.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr

#: This server's values of the ``$name`` bounds below (``openapi.placeholder_values``), set while its OpenAPI
#: document is generated; a ``$name`` with no value is left out of the schema.
SCHEMA_VALUES: ContextVar[dict[str, Any] | None] = ContextVar("schema_values", default=None)


def _schema_extra(**schema: Any):
    def extra(out: dict[str, Any]) -> None:
        values = SCHEMA_VALUES.get() or {}
        for key, value in schema.items():
            if not (isinstance(value, str) and value.startswith("$")):
                out[key] = value
            elif value[1:] in values:
                out[key] = values[value[1:]]

    return extra


def _bounds(**schema: Any) -> Any:
    """Schema-only bounds (validation.py enforces them with its own messages)."""
    return Field(json_schema_extra=_schema_extra(**schema))


def _integral(value: Any) -> Any:
    """``3.0`` as ``3``: JSON Schema's integers include numbers with a zero fraction (what generated clients and
    Schemathesis may send); ``3.5``, ``"3"`` and ``true`` stay errors."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: An integer as JSON Schema defines one (``2.0`` included), never a bool or a string.
Integer = Annotated[StrictInt, BeforeValidator(_integral)]
#: One token id: in the vocabulary.
TokenId = Annotated[Integer, _bounds(minimum=0, maximum="$max_token_id")]
Texts = Annotated[list[StrictStr], _bounds(minItems=1, maxItems="$max_client_batch_size")]
Ids = Annotated[list[TokenId], _bounds(minItems=1)]
IdBatch = Annotated[list[Ids], _bounds(minItems=1, maxItems="$max_client_batch_size")]
#: A string, a list of strings, one list of token ids, or a list of lists of token ids.
EmbeddingInput = Union[StrictStr, Texts, Ids, IdBatch]  # noqa: UP007 - a runtime alias
TruncationDirection = Literal["right", "left", "Right", "Left"]

_TRUNCATE = (
    "Cut inputs over the model's limit (default for texts and token ids alike); false rejects them with 400. Token "
    "ids that start with [CLS] and end with [SEP] keep both when cut."
)
_DIRECTION = "Which end of an over-long input is cut: right keeps its start, left keeps its end (special tokens kept)."
_PROMPT = "A named prompt of the model (sentence-transformers' prompt_name), put before every text."


def _prompt_name() -> object:
    return Field(None, description=_PROMPT, json_schema_extra=_schema_extra(enum="$prompt_names"))


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class OpenAIEmbeddingRequest(_Request):
    """``POST /v1/embeddings`` (and ``POST /embeddings``), as the OpenAI API defines it, plus ``truncate``."""

    input: EmbeddingInput = Field(
        description="Text(s) or token ids to embed. An empty string is embedded ([CLS] [SEP]); an empty list is an "
        "error."
    )
    model: StrictStr | None = Field(None, description="Accepted and echoed as the served model name.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Integer | None = Field(
        None,
        description="Keep the first N dimensions and re-normalise (a quality trade-off, as in TEI).",
        json_schema_extra=_schema_extra(minimum=1, maximum="$dimension"),
    )
    user: StrictStr | None = None
    truncate: StrictBool = Field(True, description="Extension. " + _TRUNCATE)


class TEIEmbedRequest(_Request):
    """``POST /embed`` (and ``POST /``, ``POST /invocations``), as text-embeddings-inference defines it."""

    inputs: EmbeddingInput
    normalize: StrictBool = True
    truncate: StrictBool | None = Field(True, description=_TRUNCATE)
    truncation_direction: TruncationDirection = Field("right", description=_DIRECTION)
    prompt_name: StrictStr | None = _prompt_name()
    dimensions: Integer | None = Field(
        None,
        description="Keep the first N dimensions (re-normalised when normalize is true).",
        json_schema_extra=_schema_extra(minimum=1, maximum="$dimension"),
    )


class TEIEmbedAllRequest(_Request):
    """``POST /embed_all`` (TEI): every token's last-layer vector, before pooling."""

    inputs: EmbeddingInput
    truncate: StrictBool | None = Field(True, description=_TRUNCATE)
    truncation_direction: TruncationDirection = Field("right", description=_DIRECTION)
    prompt_name: StrictStr | None = _prompt_name()


class SimilarityInput(_Request):
    """The ``inputs`` of ``POST /similarity``."""

    source_sentence: StrictStr
    sentences: Texts


class SimilarityParameters(_Request):
    """The optional ``parameters`` of ``POST /similarity``."""

    truncate: StrictBool | None = Field(True, description=_TRUNCATE)
    truncation_direction: TruncationDirection = Field("right", description=_DIRECTION)
    prompt_name: StrictStr | None = _prompt_name()


class TEISimilarityRequest(_Request):
    """``POST /similarity`` (TEI): cosine similarity of ``source_sentence`` to each of ``sentences``."""

    inputs: SimilarityInput
    parameters: SimilarityParameters | None = None


class TEITokenizeRequest(_Request):
    """``POST /tokenize`` (TEI). Inputs are not truncated here, so a client can see what would be cut."""

    inputs: StrictStr | Texts
    add_special_tokens: StrictBool = True
    prompt_name: StrictStr | None = _prompt_name()


class TEIDecodeRequest(_Request):
    """``POST /decode`` (TEI): token ids back to text."""

    ids: list[TokenId] | Annotated[list[list[TokenId]], _bounds(minItems=1, maxItems="$max_client_batch_size")] = Field(
        description="One list of token ids, or a batch of them."
    )
    skip_special_tokens: StrictBool = True


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


class ModelCard(BaseModel):
    """One model, as OpenAI's ``/v1/models`` describes it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


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


class Health(BaseModel):
    """``GET /health``, ``GET /``, ``GET /ping``."""

    status: Literal["ok"]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    """An error on the OpenAI routes."""

    error: OpenAIErrorDetail


class TEIError(BaseModel):
    """An error on every other route."""

    error: str
    error_type: str
