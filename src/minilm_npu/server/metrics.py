"""Prometheus metrics, in a registry of their own per app (so tests and embedders can build several apps).

Each app's registry also carries prometheus-client's process collector (``process_resident_memory_bytes``, CPU
seconds, open files; on Linux), as the global registry would.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class ServerMetrics:
    """Every metric the server exports.

    Args:
        registry: Where to register; by default a fresh ``CollectorRegistry`` with a ``ProcessCollector`` (a
            registry given here keeps the collectors it has: the global one already has the process collector).
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)  # process_*: RSS, CPU time, open files (from /proc; none elsewhere)
        self.registry = r = registry
        self.requests = Counter(
            "minilm_requests", "HTTP requests by route and status code", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "minilm_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "minilm_queue_seconds",
            "Time a request's inputs waited for a device batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "minilm_inference_seconds", "Forward-pass time per device batch", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("minilm_batch_size", "Inputs per device batch", buckets=_SIZE_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "minilm_batch_tokens", "Real tokens per device batch", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("minilm_queue_depth", "Inputs waiting for a device batch", registry=r)
        self.in_flight = Gauge(
            "minilm_requests_in_flight", "Embedding requests admitted and not yet answered", registry=r
        )
        self.inputs = Counter("minilm_inputs", "Inputs embedded", registry=r)
        self.tokens = Counter("minilm_tokens", "Real tokens embedded", registry=r)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
