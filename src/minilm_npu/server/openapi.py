"""The published contract: every route's statuses, this server's bounds, and its authentication.

Routes declare their error statuses with :func:`errors_doc`. :func:`build_openapi` then makes FastAPI's schema
this server's: the ``$name`` bounds of ``schemas.py`` get this server's values (most inputs per request, the
vector width, the vocabulary, the model's prompt names), and with an API key every route outside
:func:`~minilm_npu.server.middleware.is_open` gets the bearer scheme and its 401.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .errors import is_openai_path
from .middleware import is_open
from .schemas import SCHEMA_VALUES, OpenAIError, TEIError
from .state import ServerState

#: What each error status means, the same on every route.
ERRORS = {
    400: "A bad value: an empty list, more inputs than --max-client-batch-size, an input over the model's limit "
    "with truncate: false, a token id outside the vocabulary, dimensions out of range, an unknown prompt_name, "
    "text that is not valid Unicode.",
    401: "Missing or wrong API key (send 'Authorization: Bearer <key>').",
    404: "No such model.",
    413: "The request body is larger than --max-body-bytes.",
    422: "Malformed JSON, or a field of the wrong type or value.",
    429: "More than --max-concurrent-requests requests are in progress; retry shortly.",
    500: "Inference failed on the device (only the requests in that batch fail).",
    503: "The server is shutting down, or the model cannot answer.",
}
#: The statuses of a route that embeds (validation, admission, the batcher).
EMBED_ERRORS = (400, 413, 422, 429, 500, 503)


def errors_doc(*statuses: int, openai: bool = False) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses=`` for these error statuses, in the route's error shape."""
    model = OpenAIError if openai else TEIError
    return {status: {"model": model, "description": ERRORS[status]} for status in statuses}


def placeholder_values(state: ServerState) -> dict[str, Any]:
    """This server's values of the schema's ``$name`` placeholders."""
    encoder = state.encoder
    return {
        "max_client_batch_size": state.settings.max_client_batch_size,
        "dimension": int(encoder.dimension),
        "max_token_id": int(encoder.tokenizer.vocab_size) - 1,
        "prompt_names": [*sorted(state.encoder.prompts if state.reranker is None else ()), None],
    }


def build_openapi(app: FastAPI, state: ServerState) -> dict[str, Any]:
    """The app's OpenAPI document, with this server's bounds and authentication."""
    token = SCHEMA_VALUES.set(placeholder_values(state))
    try:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    finally:
        SCHEMA_VALUES.reset(token)
    if state.settings.api_key is not None:
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
        }
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                if is_open(method.upper(), path):
                    continue
                operation["security"] = [{"bearer": []}]
                shape = "OpenAIError" if is_openai_path(path) else "TEIError"
                operation.setdefault("responses", {})["401"] = {
                    "description": ERRORS[401],
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{shape}"}}},
                }
    return schema


def install_openapi(app: FastAPI, state: ServerState) -> None:
    """Serve :func:`build_openapi` at ``/openapi.json`` (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, state)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
