"""Server limits and options, in one immutable object shared by the app, the batcher and the CLI.

The forward batch's bounds (``max_batch_tokens``, ``batch_size``) are the encoder's, in its
:class:`~minilm_npu.config.EncoderConfig`: one setting, one route.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSettings:
    """What ``minilm-npu serve`` was told; every limit the edge enforces lives here.

    Attributes:
        served_model_name: Name reported in responses and ``/info``; None means the model's own name.
        api_key: When set, every route needs ``Authorization: Bearer <key>`` except the health routes (``GET
            /health``, ``/``, ``/ping``), ``/metrics`` and the API's description.
        max_client_batch_size: Most inputs one request may carry.
        max_concurrent_requests: Requests admitted at once (tokenizing, queued or running); more get 429.
        max_wait_ms: How long an idle device waits for more requests to join a batch that is not yet full; 0
            (the default) runs whatever is queued as soon as a device is free, as text-embeddings-inference does.
        max_body_bytes: Largest request body accepted; larger bodies get 413 before they are parsed.
        health_timeout_s: How long ``/health`` waits for its forward pass before answering 503.
        docs: Serve the API's description (``/openapi.json``, ``/docs``, ``/redoc``), without an API key.
        fast_path: Serve the embedding routes straight from ASGI (``server/fastpath.py``); False sends them
            through FastAPI's routing too (the same answers, slower; for comparisons).
        warm_up_in_background: Open the port at once and warm the model up behind it, answering 503 ("warming
            up") on ``/health`` and the model's routes until every shape gear of every device has run once
            (``minilm-npu serve`` does: an NPU's warm-up takes a while). False: the app's startup waits for the
            warm-up, so an in-process user gets a ready app.
    """

    served_model_name: str | None = None
    api_key: str | None = None
    max_client_batch_size: int = 256
    max_concurrent_requests: int = 512
    max_wait_ms: float = 0.0
    max_body_bytes: int = 2_000_000
    health_timeout_s: float = 10.0
    docs: bool = True
    fast_path: bool = True
    warm_up_in_background: bool = False

    def __post_init__(self) -> None:
        for name in ("max_client_batch_size", "max_concurrent_requests", "max_body_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not self.max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms must be >= 0, not {self.max_wait_ms!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key must not be empty")
