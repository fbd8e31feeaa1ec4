"""OpenAI- and TEI-compatible embedding server with dynamic batching.

``create_app(encoder, settings)`` builds the ASGI application (FastAPI, with a fast path for the embedding routes);
``minilm-npu serve`` runs it under uvicorn.
FastAPI, uvicorn and prometheus-client come with the ``server`` extra (``pip install 'minilm-npu[server]'``).
Names are imported lazily so that ``server.settings`` stays cheap (the CLI reads its defaults for ``--help``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "ServerSettings":
        from .settings import ServerSettings

        return ServerSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
