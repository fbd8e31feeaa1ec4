"""Error responses: one taxonomy, rendered OpenAI-style on ``/v1/*`` and TEI-style everywhere else.

OpenAI clients parse ``{"error": {"message", "type", "param", "code"}}``; TEI clients parse
``{"error": "...", "error_type": "..."}``. Handlers below turn every failure (our own, FastAPI's validation,
Starlette's 404/405, anything unexpected) into one of the two, so a client never sees a traceback.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

# kind -> (OpenAI "type", TEI "error_type")
_TYPES = {
    "validation": ("invalid_request_error", "validation"),
    "empty": ("invalid_request_error", "empty"),
    "auth": ("invalid_request_error", "auth"),
    "not_found": ("invalid_request_error", "not_found"),
    "no_model": ("invalid_request_error", "not_found"),
    "too_large": ("invalid_request_error", "payload_too_large"),
    "overloaded": ("rate_limit_error", "overloaded"),
    "unhealthy": ("server_error", "unhealthy"),
    "backend": ("server_error", "backend"),
}
_CODES = {"auth": "invalid_api_key", "overloaded": "rate_limit_exceeded", "no_model": "model_not_found"}


class ApiError(Exception):
    """An error the client caused or must react to, with its HTTP status and a one-line message.

    Args:
        status: HTTP status code.
        message: One line saying what was wrong and, where it helps, which limit or flag applies.
        kind: One of ``validation``, ``empty``, ``auth``, ``not_found``, ``no_model``, ``too_large``,
            ``overloaded``, ``unhealthy``, ``backend``.
        param: The request field at fault (OpenAI's ``param``), if any.
    """

    def __init__(self, status: int, message: str, kind: str = "validation", param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param


def is_openai_path(path: str) -> bool:
    """Whether a path belongs to the OpenAI-compatible API (and so gets OpenAI-style errors): ``/v1/*``, and
    ``/embeddings``, which text-embeddings-inference serves as OpenAI's route without the ``/v1``."""
    return path.startswith("/v1/") or path in ("/v1", "/embeddings")


def error_body(path: str, message: str, kind: str, param: str | None = None) -> dict:
    """The JSON error body for ``path``'s API style."""
    openai_type, tei_type = _TYPES.get(kind, _TYPES["validation"])
    if is_openai_path(path):
        return {"error": {"message": message, "type": openai_type, "param": param, "code": _CODES.get(kind)}}
    return {"error": message, "error_type": tei_type}


def error_response(
    path: str, status: int, message: str, kind: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A ``JSONResponse`` carrying :func:`error_body`."""
    return JSONResponse(error_body(path, message, kind, param), status_code=status, headers=headers)


#: pydantic names a validated type ``function-before[_integral(), int]``; a client only needs the ``int``.
_VALIDATOR_TAG = re.compile(r"function-\w+\[\w+\(\), (\w+)\]")


def _union_tag(error: dict, field: str | None) -> str | None:
    """The union member (``str``, ``list[int]``, ...) an error belongs to, if it is one of ``field``'s."""
    loc = [part for part in error.get("loc", ()) if part != "body"]
    if len(loc) > 1 and loc[0] == field and isinstance(loc[1], str):
        tag = _VALIDATOR_TAG.sub(r"\1", loc[1])
        if tag in ("str", "int", "bool") or "[" in tag:
            return tag
    return None


def describe_validation(errors: Sequence[dict]) -> tuple[str, str | None]:
    """One line out of pydantic's error list (FastAPI's, whose locations start with ``body``, or pydantic's own):
    which field, and what was expected.

    A union field (``input``) fails once per accepted shape, each with the shape's tag in its location; those
    are folded into one "expected one of ..." message rather than reporting the first shape's complaint.
    """
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    field = loc[0] if loc else None
    if not loc and first.get("type") in ("model_attributes_type", "model_type", "dict_type", "missing"):
        return "request body must be a JSON object (send Content-Type: application/json)", None
    shapes = [tag for tag in (_union_tag(e, field) for e in errors) if tag]
    if field and len(shapes) > 1:
        unique = list(dict.fromkeys(shapes))
        return f"{field}: wrong type or value; expected one of: {', '.join(unique)}", field
    message = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return message, field


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves on the request's path (asked of the router itself, included routers too)."""
    allowed = []
    for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that render every error in the route's API style."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc.status, exc.message, exc.kind, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation(exc.errors())
        return error_response(request.url.path, 422, message, "validation", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found" if exc.status_code in (404, 405) else "validation"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path only; "/" has two (GET health, POST task).
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(request.url.path, exc.status_code, str(exc.detail), kind, headers=headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The traceback goes to the server log only; the client gets one line.
        log.exception("unhandled error on %s", request.url.path)
        return error_response(request.url.path, 500, f"internal error: {type(exc).__name__}", "backend")
